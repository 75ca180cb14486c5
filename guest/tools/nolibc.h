/*
 * What the guest tools built without a C library (in guest/tools/) share:
 * raw system calls, output on stdout, exit, string equality.
 */
typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#define NOLIBC_FN static __attribute__((unused))

NOLIBC_FN long sys6(long n, long a, long b, long c, long d, long e, long f)
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

#define sys3(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)

enum { NOLIBC_WRITE = 1, NOLIBC_EXIT_GROUP = 231 };

NOLIBC_FN long str_len(const char *s)
{
	long n = 0;
	while (s[n])
		n++;
	return n;
}

NOLIBC_FN void put_n(const char *s, long n)
{
	sys3(NOLIBC_WRITE, 1, s, n);
}

NOLIBC_FN void put(const char *s)
{
	put_n(s, str_len(s));
}

NOLIBC_FN void put_num(u64 v)
{
	char b[24];
	int i = 23;
	b[i] = 0;
	do {
		b[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(b + i);
}

NOLIBC_FN __attribute__((noreturn)) void quit(int code)
{
	sys3(NOLIBC_EXIT_GROUP, code, 0, 0);
	for (;;)
		;
}

NOLIBC_FN int same(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}
