/*
 * The host's floor for the benchmarks: the work a device does per request,
 * done with bare system calls, so that skvm's figures can be printed beside
 * what the host itself can do in the same run. scripts/bench-common.sh
 * builds it (`build_floor`); scripts/bench-fs.sh and scripts/bench-devices.sh
 * run it.
 *
 *   floor create DIR N          N files made (open O_CREAT|O_EXCL, close)
 *   floor stat DIR N            N files looked up (fstatat, no follow)
 *   floor unlink DIR N          N files removed (unlinkat)
 *   floor write FILE SIZE N     N sequential pwrites of SIZE bytes; offsets
 *                               wrap at 64 MiB
 *   floor read FILE SIZE N      the same with pread, on the file as the
 *                               write left it (written first if shorter)
 *   floor randread FILE SIZE N  N preads of SIZE bytes at random aligned
 *                               offsets of an existing FILE
 *   floor randwrite FILE SIZE N the same with pwrite
 *   floor getrandom SIZE N      N getrandom calls of SIZE bytes
 *   floor eventfd N             N round trips between two processes over
 *                               two eventfds: one writes the first and
 *                               waits on the second, the other answers,
 *                               as a kick and its interrupt do; each
 *                               sleeps in read(2) while it waits
 *   floor eventfd-poll N        the same with the answering side waiting as
 *                               a device worker does: poll(2) over the kick
 *                               and three idle eventfds (its control
 *                               channel and other queues), then a read
 *   floor eventfd-epoll N       the same with the answering side in
 *                               epoll_wait(2) on a set of those four fds
 *                               made once, then a read
 *   floor request WORK N        a depth-1 request made with the system
 *                               calls skvm's device process and its
 *                               driver make for it, bare: the driver
 *                               writes the kick and waits in poll(2) on
 *                               the interrupt (5 s timeout), then reads
 *                               it; the device waits in poll(2) over the
 *                               kick and an idle seqpacket socket (its
 *                               control channel), reads the kick, does
 *                               WORK and writes the interrupt. WORK:
 *                               rng (getrandom of 64 bytes; rng:SIZE of
 *                               SIZE bytes, at most 4096), or
 *                               randread:FILE or randwrite:FILE (preadv or
 *                               pwritev of 4 KiB at a random aligned
 *                               offset of FILE). What skvm adds beyond
 *                               these calls is its own user-space work
 *   floor request WORK DEPTH N  the same with DEPTH requests per kick: the
 *                               device does WORK DEPTH times before its
 *                               one interrupt, as skvm's does for a
 *                               batch; N requests (a multiple of DEPTH),
 *                               percentiles per kick, CPU per request
 *   floor eventfd-spin N        the same with both spinning on
 *                               non-blocking reads: the floor of a host
 *                               whose cores are busy (never idle, never
 *                               woken from a halt)
 *   floor load KERNEL INITRD N  N times: the bytes a boot loads (an ELF
 *                               kernel's PT_LOAD file bytes, else the whole
 *                               file, and the initrd) spliced into a fresh
 *                               256 MiB memfd, one thread, nothing else:
 *                               the floor of exec -> first KVM_RUN
 *   floor load-huge KERNEL INITRD N
 *                               the same into a memfd of the host's 2 MiB
 *                               pages (MFD_HUGETLB; needs 128 free in the
 *                               pool), read through a mapping, as
 *                               `skvm run --hugepages` loads them
 *   floor touch-huge N          N 2 MiB pages of the host's pool faulted
 *                               in (a byte written to each) and given
 *                               back, timed per page: warms a nested
 *                               host's pool before it is measured
 *
 * With FLOOR_CPUS=H,D in the environment (as `skvm drive --cpus H,D`), the
 * answering side of the eventfd round trips, and every other op, runs on
 * CPU D, the side that kicks on CPU H.
 *
 * Files in DIR are named f0, f1, ... Prints one line of key=value words: op,
 * n, secs, per_s, mb_per_s, p50_us, p90_us, p99_us (each call or round trip
 * timed), cpu_us_per_op (the CPU time of the process doing the work, per
 * operation: for eventfd, the answering process's). Exit status 1 with a
 * message on an error, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <poll.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SPAN (64ull << 20)

static void die(const char *what)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static unsigned long number(const char *s)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);
	if (!*s || *end || v == 0) {
		fprintf(stderr, "floor: '%s': expected a positive number\n", s);
		exit(2);
	}
	return v;
}

/* Per-operation latencies of one run. */
static uint64_t *lat;

static int by_value(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The p-th percentile by nearest rank, in microseconds. */
static double pct(unsigned long n, unsigned p)
{
	unsigned long rank = (p * n + 99) / 100;
	if (rank < 1)
		rank = 1;
	return lat[rank - 1] / 1e3;
}

static double cpu_us(const struct rusage *r)
{
	return r->ru_utime.tv_sec * 1e6 + r->ru_utime.tv_usec + r->ru_stime.tv_sec * 1e6 +
	       r->ru_stime.tv_usec;
}

static double self_cpu_us(void)
{
	struct rusage r;
	getrusage(RUSAGE_SELF, &r);
	return cpu_us(&r);
}

/* Reports `n` timed steps of `per` operations each (per_s and the CPU are
 * per operation, the percentiles per step). */
static void report_steps(const char *op, unsigned long n, unsigned long per, uint64_t ns,
			 double bytes, double cpu)
{
	double secs = ns > 0 ? ns / 1e9 : 1e-9, ops = (double)n * per;
	qsort(lat, n, sizeof *lat, by_value);
	printf("op=%s n=%.0f secs=%.6f per_s=%.0f mb_per_s=%.1f p50_us=%.2f p90_us=%.2f "
	       "p99_us=%.2f cpu_us_per_op=%.3f\n",
	       op, ops, secs, ops / secs, bytes / secs / 1e6, pct(n, 50), pct(n, 90), pct(n, 99),
	       cpu / ops);
}

static void report(const char *op, unsigned long n, uint64_t ns, double bytes, double cpu)
{
	report_steps(op, n, 1, ns, bytes, cpu);
}

/* xorshift64, for random offsets. */
static uint64_t next_random(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int files(const char *op, const char *dir, unsigned long n)
{
	int d = open(dir, O_RDONLY | O_DIRECTORY);
	if (d < 0)
		die(dir);
	char name[32];
	struct stat st;
	double cpu = self_cpu_us();
	uint64_t start = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		snprintf(name, sizeof name, "f%lu", i);
		uint64_t t = now_ns();
		if (!strcmp(op, "create")) {
			int fd = openat(d, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
			if (fd < 0 || close(fd))
				die(name);
		} else if (!strcmp(op, "stat")) {
			if (fstatat(d, name, &st, AT_SYMLINK_NOFOLLOW))
				die(name);
		} else if (unlinkat(d, name, 0)) {
			die(name);
		}
		lat[i] = now_ns() - t;
	}
	uint64_t ns = now_ns() - start;
	report(op, n, ns, 0, self_cpu_us() - cpu);
	return 0;
}

static int data(const char *op, const char *path, unsigned long size, unsigned long n)
{
	int random = !strncmp(op, "rand", 4);
	int reading = !strcmp(op, "read") || !strcmp(op, "randread");
	int flags = O_RDWR | O_CLOEXEC | (random ? 0 : O_CREAT) | (reading || random ? 0 : O_TRUNC);
	int fd = open(path, flags, 0644);
	if (fd < 0)
		die(path);
	char *buf = malloc(size);
	if (!buf)
		die("malloc");
	memset(buf, 0x5a, size);
	struct stat st;
	if (fstat(fd, &st))
		die(path);
	unsigned long long span = SPAN / size * size;
	if (random)
		span = (unsigned long long)st.st_size / size * size;
	else if ((unsigned long long)n * size < span)
		span = (unsigned long long)n * size;
	if (span == 0) {
		fprintf(stderr, "floor: %s: smaller than one request\n", path);
		return 1;
	}
	if (reading && !random && (unsigned long long)st.st_size < span) {
		for (unsigned long long off = 0; off < span; off += size)
			if (pwrite(fd, buf, size, off) != (ssize_t)size)
				die("pwrite");
	}
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	double cpu = self_cpu_us();
	uint64_t start = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		unsigned long long off = random ? next_random(&seed) % (span / size) * size
						: (unsigned long long)i * size % span;
		uint64_t t = now_ns();
		ssize_t got = reading ? pread(fd, buf, size, off) : pwrite(fd, buf, size, off);
		lat[i] = now_ns() - t;
		if (got != (ssize_t)size)
			die(reading ? "pread" : "pwrite");
	}
	uint64_t ns = now_ns() - start;
	report(op, n, ns, (double)n * size, self_cpu_us() - cpu);
	return 0;
}

static int randomness(unsigned long size, unsigned long n)
{
	char *buf = malloc(size);
	if (!buf)
		die("malloc");
	double cpu = self_cpu_us();
	uint64_t start = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		uint64_t t = now_ns();
		if (getrandom(buf, size, 0) != (ssize_t)size)
			die("getrandom");
		lat[i] = now_ns() - t;
	}
	uint64_t ns = now_ns() - start;
	report("getrandom", n, ns, (double)n * size, self_cpu_us() - cpu);
	return 0;
}

/* FLOOR_CPUS=H,D: H (`device` 0) or D (1); -1 when unset. */
static int floor_cpu(int device)
{
	const char *v = getenv("FLOOR_CPUS");
	int h, d;
	if (!v || !*v)
		return -1;
	if (sscanf(v, "%d,%d", &h, &d) != 2 || h < 0 || d < 0 || h >= CPU_SETSIZE ||
	    d >= CPU_SETSIZE) {
		fprintf(stderr, "floor: FLOOR_CPUS='%s': expected H,D (two CPU numbers)\n", v);
		exit(2);
	}
	return device ? d : h;
}

/* Runs the calling process on FLOOR_CPUS's H or D side, if set. */
static void pin(int device)
{
	int cpu = floor_cpu(device);
	if (cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set))
		die("FLOOR_CPUS");
}

/* Reads eventfd `fd`, spinning on EAGAIN when `spin`. */
static int take(int fd, int spin)
{
	uint64_t v;
	for (;;) {
		ssize_t n = read(fd, &v, sizeof v);
		if (n == sizeof v)
			return 0;
		if (!(spin && n < 0 && errno == EAGAIN))
			return -1;
	}
}

/* Waits for `kick` as a worker waits: poll over it and `idle` fds. */
static int polled_take(int kick, const int idle[3])
{
	struct pollfd p[4] = {{kick, POLLIN, 0}, {idle[0], POLLIN, 0}, {idle[1], POLLIN, 0},
			      {idle[2], POLLIN, 0}};
	if (poll(p, 4, -1) < 1)
		return -1;
	return take(kick, 0);
}

/* Waits for `kick` in epoll set `ep` (which holds it), then reads it. */
static int epolled_take(int ep, int kick)
{
	struct epoll_event e[4];
	if (epoll_wait(ep, e, 4, -1) < 1)
		return -1;
	return take(kick, 0);
}

/* An epoll set of `kick` and the `idle` fds, all for reading. */
static int epoll_set(int kick, const int idle[3])
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	int fds[4] = {kick, idle[0], idle[1], idle[2]};
	for (int i = 0; i < 4; i++) {
		struct epoll_event e = {.events = EPOLLIN, .data.fd = fds[i]};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e))
			die("epoll_ctl");
	}
	return ep;
}

/* N round trips between this process (on FLOOR_CPUS's H) and a child (on
 * D): the child calls `answer` N times, this process times `ask` N times;
 * reported as `op` of `per` operations each, with the child's CPU time.
 * Each returns 0 on success. */
static int round_trips(const char *op, unsigned long n, unsigned long per, int (*answer)(void *),
		       int (*ask)(void *), void *ctx)
{
	pin(1); /* the child's CPU, which it inherits */
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		for (unsigned long i = 0; i < n; i++)
			if (answer(ctx))
				_exit(1);
		_exit(0);
	}
	pin(0);
	uint64_t start = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		uint64_t t = now_ns();
		if (ask(ctx))
			die(op);
		lat[i] = now_ns() - t;
	}
	uint64_t ns = now_ns() - start;
	int status;
	struct rusage r;
	if (wait4(child, &status, 0, &r) != child || !WIFEXITED(status) || WEXITSTATUS(status))
		die("the answering process");
	report_steps(op, n, per, ns, 0, cpu_us(&r));
	return 0;
}

/* An eventfd ping-pong's fds and how its answering side waits. */
struct pingpong {
	int kick, irq, spin, ep, idle[3];
};

static int pingpong_answer(void *ctx)
{
	struct pingpong *p = ctx;
	uint64_t v = 1;
	int got = p->spin == 2	 ? polled_take(p->kick, p->idle)
		  : p->spin == 3 ? epolled_take(p->ep, p->kick)
				 : take(p->kick, p->spin);
	return got || write(p->irq, &v, sizeof v) != sizeof v ? -1 : 0;
}

static int pingpong_ask(void *ctx)
{
	struct pingpong *p = ctx;
	uint64_t v = 1;
	return write(p->kick, &v, sizeof v) != sizeof v || take(p->irq, p->spin == 1) ? -1 : 0;
}

/* spin: 0 sleep in read, 1 spin on non-blocking reads, 2 poll then read,
 * 3 epoll_wait then read. */
static int pingpong(unsigned long n, int spin)
{
	struct pingpong p = {.spin = spin, .ep = -1};
	for (int i = 0; i < 3; i++)
		if ((p.idle[i] = eventfd(0, EFD_CLOEXEC)) < 0)
			die("eventfd");
	int flags = EFD_CLOEXEC | (spin == 1 ? EFD_NONBLOCK : 0);
	p.kick = eventfd(0, flags), p.irq = eventfd(0, flags);
	if (p.kick < 0 || p.irq < 0)
		die("eventfd");
	if (spin == 3)
		p.ep = epoll_set(p.kick, p.idle);
	static const char *const names[] = {"eventfd", "eventfd-spin", "eventfd-poll",
					    "eventfd-epoll"};
	return round_trips(names[spin], n, 1, pingpong_answer, pingpong_ask, &p);
}

/* With `floor load-huge`: the huge-page memfd's mapping, which is read
 * into (hugetlbfs takes no splice). */
static char *huge_ram;

/* Splices `len` bytes of `in` at `off` into `out` at `at` through `pipe`
 * (or, with `huge_ram`, reads them into it). */
static void splice_into(int in, off_t off, int out, off_t at, size_t len, const int pipe[2])
{
	while (huge_ram && len > 0) {
		ssize_t got = pread(in, huge_ram + at, len, off);
		if (got <= 0)
			die("read from the image");
		len -= got, off += got, at += got;
	}
	while (len > 0) {
		ssize_t got = splice(in, &off, pipe[1], NULL, len, 0);
		if (got <= 0)
			die("splice from the image");
		len -= got;
		for (ssize_t moved = 0; moved < got;) {
			ssize_t n = splice(pipe[0], NULL, out, &at, got - moved, 0);
			if (n <= 0)
				die("splice into the memfd");
			moved += n;
		}
	}
}

/* Splices what a boot loads of `kernel` (see the usage) into `ram`. */
static double load_kernel(int kernel, int ram, const int pipe[2])
{
	unsigned char eh[64];
	struct stat st;
	if (fstat(kernel, &st))
		die("kernel");
	if (pread(kernel, eh, sizeof eh, 0) != sizeof eh || memcmp(eh, "\x7f" "ELF", 4)) {
		splice_into(kernel, 0, ram, 16 << 20, st.st_size, pipe);
		return st.st_size;
	}
	uint64_t phoff;
	uint16_t phentsize, phnum;
	memcpy(&phoff, eh + 0x20, 8);
	memcpy(&phentsize, eh + 0x36, 2);
	memcpy(&phnum, eh + 0x38, 2);
	double bytes = 0;
	for (unsigned i = 0; i < phnum; i++) {
		unsigned char ph[56];
		uint32_t type;
		uint64_t off, paddr, filesz;
		if (pread(kernel, ph, sizeof ph, phoff + (uint64_t)i * phentsize) != sizeof ph)
			die("kernel program header");
		memcpy(&type, ph, 4);
		memcpy(&off, ph + 0x08, 8);
		memcpy(&paddr, ph + 0x18, 8);
		memcpy(&filesz, ph + 0x20, 8);
		if (type != 1 /* PT_LOAD */ || filesz == 0)
			continue;
		if (paddr + filesz > (192ull << 20)) {
			fprintf(stderr, "floor: kernel segment at %#llx does not fit\n",
				(unsigned long long)paddr);
			exit(1);
		}
		splice_into(kernel, off, ram, paddr, filesz, pipe);
		bytes += filesz;
	}
	return bytes;
}

static int load(const char *kernel_path, const char *initrd_path, unsigned long n, int huge)
{
	int kernel = open(kernel_path, O_RDONLY | O_CLOEXEC);
	int initrd = open(initrd_path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (kernel < 0 || initrd < 0 || fstat(initrd, &st))
		die(kernel < 0 ? kernel_path : initrd_path);
	if (st.st_size > (64 << 20)) {
		fprintf(stderr, "floor: %s: larger than 64 MiB\n", initrd_path);
		return 1;
	}
	int pipe[2];
	if (pipe2(pipe, O_CLOEXEC))
		die("pipe");
	fcntl(pipe[1], F_SETPIPE_SZ, 1 << 20);
	double bytes = 0, cpu = self_cpu_us();
	uint64_t start = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		uint64_t t = now_ns();
		int ram = memfd_create("floor-ram", MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
		if (ram < 0 || ftruncate(ram, 256 << 20))
			die("memfd");
		if (huge) {
			huge_ram = mmap(NULL, 256 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, ram, 0);
			if (huge_ram == MAP_FAILED)
				die("mmap of 2 MiB pages (is the pool large enough?)");
		}
		bytes = load_kernel(kernel, ram, pipe);
		splice_into(initrd, 0, ram, (256 << 20) - st.st_size, st.st_size, pipe);
		bytes += st.st_size;
		if (huge) {
			munmap(huge_ram, 256 << 20);
			huge_ram = NULL;
		}
		close(ram);
		lat[i] = now_ns() - t;
	}
	uint64_t ns = now_ns() - start;
	report(huge ? "load-huge" : "load", n, ns, bytes * n, self_cpu_us() - cpu);
	return 0;
}

/* Faults in N of the pool's 2 MiB pages once, one at a time (a byte
 * written to each; the kernel clears the whole page), then gives them
 * back: a nested host's outer hypervisor backs the guest's memory at its
 * first touch, and the pool keeps its pages, so later runs do not pay for
 * that. Timed per page. */
static int touch_huge(unsigned long n)
{
	size_t page = 2 << 20;
	int fd = memfd_create("floor-touch", MFD_CLOEXEC | MFD_HUGETLB);
	if (fd < 0 || ftruncate(fd, (off_t)(n * page)))
		die("memfd of 2 MiB pages");
	char *p = mmap(NULL, n * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		die("mmap of 2 MiB pages (is the pool large enough?)");
	double cpu = self_cpu_us();
	uint64_t start = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		uint64_t t = now_ns();
		p[i * page] = 1;
		lat[i] = now_ns() - t;
	}
	uint64_t ns = now_ns() - start;
	munmap(p, n * page);
	close(fd);
	report("touch-huge", n, ns, (double)n * page, self_cpu_us() - cpu);
	return 0;
}

/* The work of one request in `floor request`: -1 rng (getrandom of
 * `size` bytes), else `fd`'s preadv (reading) or pwritev of 4 KiB at a
 * random offset within `span`. */
struct work {
	int fd, reading;
	size_t size;
	unsigned long long span;
	uint64_t seed;
	char buf[4096];
	/* The request's control channel (idle), kick and interrupt. */
	int chan[2], kick, irq;
	/* Requests per kick. */
	unsigned long depth;
};

static int do_work(struct work *w)
{
	if (w->fd < 0)
		return getrandom(w->buf, w->size, 0) == (ssize_t)w->size ? 0 : -1;
	struct iovec v = {w->buf, sizeof w->buf};
	off_t off = next_random(&w->seed) % (w->span / sizeof w->buf) * sizeof w->buf;
	ssize_t got = w->reading ? preadv(w->fd, &v, 1, off) : pwritev(w->fd, &v, 1, off);
	return got == (ssize_t)sizeof w->buf ? 0 : -1;
}

/* The device: poll, read the kick, the work, the interrupt. */
static int request_answer(void *ctx)
{
	struct work *w = ctx;
	uint64_t v;
	struct pollfd p[2] = {{w->chan[1], POLLIN, 0}, {w->kick, POLLIN, 0}};
	if (poll(p, 2, -1) < 1 || read(w->kick, &v, sizeof v) != sizeof v)
		return -1;
	for (unsigned long i = 0; i < w->depth; i++)
		if (do_work(w))
			return -1;
	return write(w->irq, &v, sizeof v) != sizeof v ? -1 : 0;
}

/* The driver: the kick, poll(2) on the interrupt, its read. */
static int request_ask(void *ctx)
{
	struct work *w = ctx;
	uint64_t v = 1;
	struct pollfd p = {w->irq, POLLIN, 0};
	return write(w->kick, &v, sizeof v) != sizeof v || poll(&p, 1, 5000) != 1 ||
			       read(w->irq, &v, sizeof v) != sizeof v
		       ? -1
		       : 0;
}

static int requests(const char *kind, unsigned long depth, unsigned long n)
{
	static struct work w = {.fd = -1, .seed = 0x9e3779b97f4a7c15ull};
	if (depth == 0 || n % depth) {
		fprintf(stderr, "floor: request: N (%lu) must be a multiple of DEPTH (%lu)\n", n,
			depth);
		exit(2);
	}
	w.depth = depth;
	w.size = 64;
	if (!strncmp(kind, "rng:", 4)) {
		w.size = number(kind + 4);
		if (w.size > sizeof w.buf) {
			fprintf(stderr, "floor: request '%s': at most %zu bytes\n", kind,
				sizeof w.buf);
			exit(2);
		}
	} else if (strcmp(kind, "rng")) {
		const char *path = strchr(kind, ':');
		w.reading = !strncmp(kind, "randread:", 9);
		if (!path || !(w.reading || !strncmp(kind, "randwrite:", 10))) {
			fprintf(stderr, "floor: request '%s': expected rng[:SIZE], randread:FILE or "
					"randwrite:FILE\n",
				kind);
			exit(2);
		}
		struct stat st;
		if ((w.fd = open(path + 1, O_RDWR | O_CLOEXEC)) < 0 || fstat(w.fd, &st))
			die(path + 1);
		w.span = (unsigned long long)st.st_size / sizeof w.buf * sizeof w.buf;
		if (w.span == 0) {
			fprintf(stderr, "floor: %s: smaller than one request\n", path + 1);
			return 1;
		}
	}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, w.chan))
		die("socketpair");
	w.kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	w.irq = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w.kick < 0 || w.irq < 0)
		die("eventfd");
	return round_trips("request", n / depth, depth, request_answer, request_ask, &w);
}

int main(int argc, char **argv)
{
	const char *op = argc > 1 ? argv[1] : "";
	unsigned long n = argc > 2 ? number(argv[argc - 1]) : 0;
	lat = n ? calloc(n, sizeof *lat) : NULL;
	if (n && !lat)
		die("calloc");
	/* The work's side; the eventfd round trips place each process. */
	if (strncmp(op, "eventfd", 7) && strcmp(op, "request"))
		pin(1);
	if (argc == 4 && (!strcmp(op, "create") || !strcmp(op, "stat") || !strcmp(op, "unlink")))
		return files(op, argv[2], n);
	if (argc == 5 && (!strcmp(op, "write") || !strcmp(op, "read") || !strcmp(op, "randread") ||
			  !strcmp(op, "randwrite")))
		return data(op, argv[2], number(argv[3]), n);
	if (argc == 4 && !strcmp(op, "getrandom"))
		return randomness(number(argv[2]), n);
	if (argc == 3 && !strcmp(op, "eventfd"))
		return pingpong(n, 0);
	if (argc == 3 && !strcmp(op, "eventfd-spin"))
		return pingpong(n, 1);
	if (argc == 3 && !strcmp(op, "eventfd-poll"))
		return pingpong(n, 2);
	if (argc == 3 && !strcmp(op, "eventfd-epoll"))
		return pingpong(n, 3);
	if (argc == 5 && !strcmp(op, "load"))
		return load(argv[2], argv[3], n, 0);
	if (argc == 5 && !strcmp(op, "load-huge"))
		return load(argv[2], argv[3], n, 1);
	if (argc == 3 && !strcmp(op, "touch-huge"))
		return touch_huge(n);
	if (argc == 4 && !strcmp(op, "request"))
		return requests(argv[2], 1, n);
	if (argc == 5 && !strcmp(op, "request"))
		return requests(argv[2], number(argv[3]), n);
	fprintf(stderr, "usage: floor create|stat|unlink DIR N | floor write|read|randread|randwrite "
			"FILE SIZE N | floor getrandom SIZE N | floor eventfd|eventfd-poll|eventfd-epoll|eventfd-spin N | "
			"floor load|load-huge "
			"KERNEL INITRD N | floor touch-huge N | floor request rng[:SIZE]|randread:FILE|randwrite:FILE [DEPTH] N\n");
	return 2;
}
