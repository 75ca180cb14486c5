/*
 * xattr: a file's extended attributes, for guest-tests/tests/fs.rs (busybox
 * has no getfattr). Built static, without a C library, into skvm's default
 * initramfs by scripts/build-guest.sh.
 *
 *   xattr set FILE NAME VALUE   setxattr, prints "XATTR set ok"
 *   xattr get FILE NAME         getxattr, prints "XATTR get VALUE"
 *   xattr list FILE             listxattr, prints "XATTR list NAME,NAME,"
 *   xattr rm FILE NAME          removexattr, prints "XATTR rm ok"
 *
 * A failure prints "XATTR OP error ERRNO" and exits 1 (2 on a usage error).
 */
typedef unsigned long u64;

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long r;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return r;
}

enum { SYS_WRITE = 1, SYS_SETXATTR = 188, SYS_GETXATTR = 191, SYS_LISTXATTR = 194,
       SYS_REMOVEXATTR = 197, SYS_EXIT_GROUP = 231 };

static char buf[65536];

static long len(const char *s)
{
	long n = 0;
	while (s[n])
		n++;
	return n;
}

static void put_n(const char *s, long n)
{
	sys6(SYS_WRITE, 1, (long)s, n, 0, 0, 0);
}

static void put(const char *s)
{
	put_n(s, len(s));
}

static __attribute__((noreturn)) void quit(int code)
{
	sys6(SYS_EXIT_GROUP, code, 0, 0, 0, 0, 0);
	for (;;)
		;
}

static int same(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

/* Prints "XATTR op ok", or the error and exits 1. */
static void result(const char *op, long r)
{
	char num[24];
	int i = 23;
	u64 v;
	put("XATTR ");
	put(op);
	if (r >= 0) {
		put(" ok\n");
		return;
	}
	v = (u64)-r;
	num[i] = 0;
	do {
		num[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(" error ");
	put(num + i);
	put("\n");
	quit(1);
}

static __attribute__((noreturn)) void usage(void)
{
	put("usage: xattr set FILE NAME VALUE | get FILE NAME | list FILE | rm FILE NAME\n");
	quit(2);
}

__attribute__((used)) void start(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	long r, i;
	if (argc < 3)
		usage();
	if (same(argv[1], "set") && argc == 5) {
		r = sys6(SYS_SETXATTR, (long)argv[2], (long)argv[3], (long)argv[4], len(argv[4]), 0, 0);
		result("set", r);
	} else if (same(argv[1], "get") && argc == 4) {
		r = sys6(SYS_GETXATTR, (long)argv[2], (long)argv[3], (long)buf, sizeof(buf), 0, 0);
		if (r < 0)
			result("get", r);
		put("XATTR get ");
		put_n(buf, r);
		put("\n");
	} else if (same(argv[1], "list") && argc == 3) {
		r = sys6(SYS_LISTXATTR, (long)argv[2], (long)buf, sizeof(buf), 0, 0, 0);
		if (r < 0)
			result("list", r);
		for (i = 0; i < r; i++)
			if (!buf[i])
				buf[i] = ',';
		put("XATTR list ");
		put_n(buf, r);
		put("\n");
	} else if (same(argv[1], "rm") && argc == 4) {
		r = sys6(SYS_REMOVEXATTR, (long)argv[2], (long)argv[3], 0, 0, 0, 0);
		result("rm", r);
	} else {
		usage();
	}
	quit(0);
}

__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call start\n");
