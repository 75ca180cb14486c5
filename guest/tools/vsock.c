/*
 * vsock: stream sockets to and from the host over skvm's virtio-vsock
 * device (skvm run --vsock), for guest-tests/tests/vsock.rs and
 * scripts/bench-devices.sh. Built static, without a C library, into skvm's
 * default initramfs by scripts/build-guest.sh.
 *
 *   vsock listen PORT echo     accept connections on PORT forever, each in
 *                              its own process: send back all it reads
 *   vsock listen PORT sink     the same, but never read: hold each
 *                              connection until the peer goes away
 *   vsock send CID PORT BYTES  connect, send BYTES of the test pattern
 *                              while reading the echo and checking it,
 *                              end the sending side, read to the end;
 *                              prints "VSOCK sent=N got=M bad=B", exits 0
 *                              only if all came back intact
 *   vsock cat CID PORT         connect; standard input to the stream, the
 *                              stream to standard output
 *
 * "listen" prints "VSOCK listening PORT" once it listens. Byte i of the
 * pattern is i % 251, as the host side of the tests has it.
 */
#include "nolibc.h"

enum { SYS_READ = 0, SYS_WRITE = 1, SYS_CLOSE = 3, SYS_POLL = 7,
       SYS_SOCKET = 41, SYS_CONNECT = 42, SYS_ACCEPT = 43, SYS_SENDTO = 44,
       SYS_SHUTDOWN = 48, SYS_BIND = 49, SYS_LISTEN = 50, SYS_FORK = 57,
       SYS_WAIT4 = 61, SYS_EXIT_GROUP = 231 };
enum { AF_VSOCK = 40, SOCK_STREAM = 1, SHUT_WR = 1, WNOHANG = 1 };
enum { POLLIN = 1, POLLOUT = 4 };
enum { MSG_DONTWAIT = 0x40, MSG_NOSIGNAL = 0x4000, EAGAIN = 11 };
#define CID_ANY 0xffffffffu
#define U32_MAX 0xfffffffful
#define CHUNK 65536

struct sockaddr_vm {
	u16 family;
	u16 reserved;
	u32 port;
	u32 cid;
	unsigned char zero[4];
};

struct pollfd {
	int fd;
	short events;
	short revents;
};

static unsigned char buf[CHUNK];
static unsigned char out[CHUNK];

static __attribute__((noreturn)) void usage(void)
{
	put("usage: vsock listen PORT echo|sink | vsock send CID PORT BYTES | vsock cat CID PORT\n");
	quit(2);
}


/* A decimal number, all digits, at most max (<= 2^40); usage() otherwise. */
static u64 number(const char *s, u64 max)
{
	u64 v = 0;
	if (!*s)
		usage();
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			usage();
		v = v * 10 + (u64)(*s - '0');
		if (v > max)
			usage();
	}
	return v;
}

/* Writes all of b[0..n); 0 on success. */
static int write_all(int fd, const unsigned char *b, long n)
{
	while (n > 0) {
		long w = sys3(SYS_WRITE, fd, b, n);
		if (w <= 0)
			return -1;
		b += w;
		n -= w;
	}
	return 0;
}

static int stream_to(u32 cid, u32 port)
{
	struct sockaddr_vm a = { AF_VSOCK, 0, port, cid, { 0 } };
	int s = (int)sys3(SYS_SOCKET, AF_VSOCK, SOCK_STREAM, 0);
	long r = s < 0 ? s : sys3(SYS_CONNECT, s, &a, sizeof(a));
	if (r < 0) {
		put("VSOCK connect failed errno=");
		put_num((u64)-r);
		put("\n");
		quit(1);
	}
	return s;
}

static void serve_echo(int c)
{
	for (;;) {
		long n = sys3(SYS_READ, c, buf, sizeof(buf));
		if (n <= 0 || write_all(c, buf, n))
			return;
	}
}

static void serve_sink(int c)
{
	/* No events asked: poll returns when the peer hangs up. */
	struct pollfd p = { c, 0, 0 };
	sys3(SYS_POLL, &p, 1, -1);
}

static __attribute__((noreturn)) void listen_on(u32 port, int echo)
{
	struct sockaddr_vm a = { AF_VSOCK, 0, port, CID_ANY, { 0 } };
	int s = (int)sys3(SYS_SOCKET, AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0 || sys3(SYS_BIND, s, &a, sizeof(a)) < 0 ||
	    sys3(SYS_LISTEN, s, 16, 0) < 0) {
		put("VSOCK cannot listen\n");
		quit(1);
	}
	put("VSOCK listening ");
	put_num(port);
	put("\n");
	for (;;) {
		int c = (int)sys3(SYS_ACCEPT, s, 0, 0);
		while (sys6(SYS_WAIT4, -1, 0, WNOHANG, 0, 0, 0) > 0)
			;
		if (c < 0)
			continue;
		if (sys3(SYS_FORK, 0, 0, 0) == 0) {
			sys3(SYS_CLOSE, s, 0, 0);
			if (echo)
				serve_echo(c);
			else
				serve_sink(c);
			quit(0);
		}
		sys3(SYS_CLOSE, c, 0, 0);
	}
}

static __attribute__((noreturn)) void send_pattern(u32 cid, u32 port, u64 len)
{
	int s = stream_to(cid, port);
	u64 sent = 0, got = 0, bad = 0;
	int ended = 0;
	if (len == 0)
		sys3(SYS_SHUTDOWN, s, SHUT_WR, 0);
	for (;;) {
		struct pollfd p = { s, POLLIN, 0 };
		if (sent < len)
			p.events |= POLLOUT;
		if (sys3(SYS_POLL, &p, 1, -1) < 0)
			continue;
		if (p.revents & POLLOUT) {
			long n = (long)(len - sent < CHUNK ? len - sent : CHUNK);
			for (long i = 0; i < n; i++)
				out[i] = (unsigned char)((sent + (u64)i) % 251);
			/*
			 * Take only what the peer's credit allows now: a write
			 * that blocked could wait on the echo of what was sent
			 * before, which waits on this side's reading. No SIGPIPE
			 * on a reset either, so the summary line still comes.
			 */
			long w = sys6(SYS_SENDTO, s, (long)out, n,
				      MSG_DONTWAIT | MSG_NOSIGNAL, 0, 0);
			if (w < 0 && w != -EAGAIN)
				break;
			sent += (u64)(w > 0 ? w : 0);
			if (w > 0 && sent == len)
				sys3(SYS_SHUTDOWN, s, SHUT_WR, 0);
		}
		if (p.revents & ~POLLOUT) {
			long n = sys3(SYS_READ, s, buf, sizeof(buf));
			if (n <= 0) {
				ended = 1;
				break;
			}
			for (long i = 0; i < n; i++)
				if (buf[i] != (unsigned char)((got + (u64)i) % 251))
					bad++;
			got += (u64)n;
		}
	}
	put("VSOCK sent=");
	put_num(sent);
	put(" got=");
	put_num(got);
	put(" bad=");
	put_num(bad);
	put("\n");
	quit(ended && got == len && sent == len && bad == 0 ? 0 : 1);
}

static __attribute__((noreturn)) void cat(u32 cid, u32 port)
{
	int s = stream_to(cid, port);
	int in_open = 1;
	for (;;) {
		struct pollfd p[2] = { { s, POLLIN, 0 }, { 0, POLLIN, 0 } };
		if (sys3(SYS_POLL, p, in_open ? 2 : 1, -1) < 0)
			continue;
		if (p[0].revents) {
			long n = sys3(SYS_READ, s, buf, sizeof(buf));
			if (n <= 0 || write_all(1, buf, n))
				quit(0);
		}
		if (in_open && p[1].revents) {
			long n = sys3(SYS_READ, 0, out, sizeof(out));
			if (n <= 0) {
				sys3(SYS_SHUTDOWN, s, SHUT_WR, 0);
				in_open = 0;
			} else if (write_all(s, out, n)) {
				quit(1);
			}
		}
	}
}

static __attribute__((noreturn, used)) void start(long *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	if (argc == 4 && same(argv[1], "listen") && same(argv[3], "echo"))
		listen_on((u32)number(argv[2], U32_MAX), 1);
	if (argc == 4 && same(argv[1], "listen") && same(argv[3], "sink"))
		listen_on((u32)number(argv[2], U32_MAX), 0);
	if (argc == 5 && same(argv[1], "send"))
		send_pattern((u32)number(argv[2], U32_MAX), (u32)number(argv[3], U32_MAX),
			     number(argv[4], 1ul << 40));
	if (argc == 4 && same(argv[1], "cat"))
		cat((u32)number(argv[2], U32_MAX), (u32)number(argv[3], U32_MAX));
	usage();
}

__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call start\n");
