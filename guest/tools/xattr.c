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
#include "nolibc.h"

enum { SYS_SETXATTR = 188, SYS_GETXATTR = 191, SYS_LISTXATTR = 194,
       SYS_REMOVEXATTR = 197 };

static char buf[65536];

/* Prints "XATTR op ok", or the error and exits 1. */
static void result(const char *op, long r)
{
	put("XATTR ");
	put(op);
	if (r >= 0) {
		put(" ok\n");
		return;
	}
	put(" error ");
	put_num((u64)-r);
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
		r = sys6(SYS_SETXATTR, (long)argv[2], (long)argv[3], (long)argv[4], str_len(argv[4]), 0, 0);
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
