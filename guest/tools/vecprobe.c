/*
 * vecprobe: do a process's vector registers survive the guest kernel's
 * context switches? (built static, without a C library, into skvm's default
 * initramfs by scripts/build-guest.sh; run by guest-tests/tests/userspace.rs)
 *
 *   vecprobe ROUNDS
 *
 * Forks: the parent keeps a pattern in ymm5 (AVX) and, where the CPU has
 * AVX-512, in zmm21 and opmask k3; each round it yields the vCPU several
 * times, then checks the registers. The child runs vzeroupper and clears
 * the same registers between its own yields. On a kernel that saves only the
 * legacy x87/SSE state the parent finds zeros in the upper halves. Prints
 *
 *   VECPROBE avx=0|1 avx512=0|1 rounds=N lost=M
 *
 * and exits 0 when nothing was lost (1 otherwise, 2 on a usage error).
 * It decides what to test from CPUID and XCR0 as user code sees them, the
 * way the C library chooses its string functions.
 */
#include "nolibc.h"

enum { SYS_SCHED_YIELD = 24, SYS_FORK = 57, SYS_WAIT4 = 61, SYS_KILL = 62 };

static void cpuid(u32 leaf, u32 sub, u32 r[4])
{
	__asm__ volatile("cpuid"
			 : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
			 : "a"(leaf), "c"(sub));
}

static u64 xcr0(void)
{
	u32 lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((u64)hi << 32) | lo;
}

static void yield_a_few(void)
{
	for (int i = 0; i < 3; i++)
		sys3(SYS_SCHED_YIELD, 0, 0, 0);
	for (volatile int k = 0; k < 2000; k++)
		;
}

static const u64 pattern[8] __attribute__((aligned(64))) = {
	0x1111222233334444UL, 0x5555666677778888UL, 0x99990000aaaabbbbUL,
	0xccccddddeeeeffffUL, 0x0123456789abcdefUL, 0xfedcba9876543210UL,
	0x0f1e2d3c4b5a6978UL, 0x8796a5b4c3d2e1f0UL,
};

/* One round of the parent: load, yield, store back; true if all came back. */
static int round_keeps(int avx512)
{
	u64 y[4] __attribute__((aligned(32)));
	u64 z[8] __attribute__((aligned(64)));
	u64 k = 0;
	int same = 1;

	__asm__ volatile("vmovdqu %0, %%ymm5" : : "m"(pattern) : "xmm5");
	if (avx512) {
		__asm__ volatile("vmovdqu64 %0, %%zmm21\n\t"
				 "movq $0xa5c3, %%rax\n\t"
				 "kmovq %%rax, %%k3"
				 :
				 : "m"(pattern)
				 : "rax");
	}
	yield_a_few();
	__asm__ volatile("vmovdqu %%ymm5, %0" : "=m"(y) : : "memory");
	for (int i = 0; i < 4; i++)
		same &= y[i] == pattern[i];
	if (avx512) {
		__asm__ volatile("vmovdqu64 %%zmm21, %0\n\t"
				 "kmovq %%k3, %1"
				 : "=m"(z), "=r"(k)
				 :
				 : "memory");
		for (int i = 0; i < 8; i++)
			same &= z[i] == pattern[i];
		same &= k == 0xa5c3;
	}
	return same;
}

static __attribute__((noreturn)) void clobber(int avx512)
{
	for (;;) {
		__asm__ volatile("vpxor %%ymm5, %%ymm5, %%ymm5\n\tvzeroupper" : : : "xmm5");
		if (avx512)
			__asm__ volatile("vpxorq %%zmm21, %%zmm21, %%zmm21\n\t"
					 "kxorq %%k3, %%k3, %%k3"
					 :
					 :
					 : "memory");
		sys3(SYS_SCHED_YIELD, 0, 0, 0);
	}
}

void __attribute__((noreturn, used)) vecprobe_main(long *sp)
{
	long rounds = 0;
	const char *a;
	u32 r[4];
	int avx = 0, avx512 = 0;
	long lost = 0;

	if (sp[0] != 2)
		goto usage;
	for (a = (const char *)sp[2]; *a; a++) {
		if (*a < '0' || *a > '9' || rounds > 1000000)
			goto usage;
		rounds = rounds * 10 + (*a - '0');
	}
	cpuid(1, 0, r);
	if ((r[2] >> 27 & 1) && (r[2] >> 28 & 1)) {
		u64 x = xcr0();
		avx = (x & 6) == 6;
		cpuid(7, 0, r);
		avx512 = avx && (r[1] >> 16 & 1) && (r[1] >> 31 & 1) && (x & 0xe0) == 0xe0;
	}
	if (avx) {
		long child = sys3(SYS_FORK, 0, 0, 0);
		if (child == 0)
			clobber(avx512);
		if (child < 0) {
			put("vecprobe: fork failed\n");
			quit(1);
		}
		for (long i = 0; i < rounds; i++)
			lost += !round_keeps(avx512);
		sys3(SYS_KILL, child, 9, 0);
		sys3(SYS_WAIT4, child, 0, 0);
	}
	put("VECPROBE avx=");
	put_num((u64)avx);
	put(" avx512=");
	put_num((u64)avx512);
	put(" rounds=");
	put_num((u64)(avx ? rounds : 0));
	put(" lost=");
	put_num((u64)lost);
	put("\n");
	quit(lost ? 1 : 0);
usage:
	put("usage: vecprobe ROUNDS\n");
	quit(2);
}

__asm__(".globl _start\n"
	"_start:\n"
	"\tmov %rsp, %rdi\n"
	"\tand $-16, %rsp\n"
	"\tcall vecprobe_main\n");
