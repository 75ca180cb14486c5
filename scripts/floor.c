/*
 * The host's floor for the benchmarks: the same work a device does per
 * request, done with bare system calls in one process, so that skvm's
 * figures can be printed beside what the host itself can do.
 * scripts/bench-common.sh builds it (`build_floor`); scripts/bench-fs.sh runs it.
 *
 *   floor create DIR N        N files made (open O_CREAT|O_EXCL, close)
 *   floor stat DIR N          N files looked up (fstatat, no follow)
 *   floor unlink DIR N        N files removed (unlinkat)
 *   floor write FILE SIZE N   N sequential pwrites of SIZE bytes; offsets
 *                             wrap at 64 MiB
 *   floor read FILE SIZE N    the same with pread, on the file as the
 *                             write left it (written first if shorter)
 *
 * Files in DIR are named f0, f1, ... Prints one line of key=value words:
 * op, n, secs, per_s, mb_per_s. Exit status 1 with a message on an error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SPAN (64ull << 20)

static void die(const char *what)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
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

static void report(const char *op, unsigned long n, double secs, double bytes)
{
	if (secs <= 0)
		secs = 1e-9;
	printf("op=%s n=%lu secs=%.6f per_s=%.0f mb_per_s=%.1f\n", op, n, secs, n / secs,
	       bytes / secs / 1e6);
}

static int files(const char *op, const char *dir, unsigned long n)
{
	int d = open(dir, O_RDONLY | O_DIRECTORY);
	if (d < 0)
		die(dir);
	char name[32];
	struct stat st;
	double start = now();
	for (unsigned long i = 0; i < n; i++) {
		snprintf(name, sizeof name, "f%lu", i);
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
	}
	report(op, n, now() - start, 0);
	return 0;
}

static int data(const char *op, const char *path, unsigned long size, unsigned long n)
{
	int reading = !strcmp(op, "read");
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (reading ? 0 : O_TRUNC), 0644);
	if (fd < 0)
		die(path);
	char *buf = malloc(size);
	if (!buf)
		die("malloc");
	memset(buf, 0x5a, size);
	unsigned long long span = SPAN / size * size;
	if ((unsigned long long)n * size < span)
		span = (unsigned long long)n * size;
	struct stat st;
	if (reading && (fstat(fd, &st) || (unsigned long long)st.st_size < span)) {
		for (unsigned long long off = 0; off < span; off += size)
			if (pwrite(fd, buf, size, off) != (ssize_t)size)
				die("pwrite");
	}
	double start = now();
	for (unsigned long i = 0; i < n; i++) {
		unsigned long long off = (unsigned long long)i * size % span;
		ssize_t got = reading ? pread(fd, buf, size, off) : pwrite(fd, buf, size, off);
		if (got != (ssize_t)size)
			die(reading ? "pread" : "pwrite");
	}
	report(op, n, now() - start, (double)n * size);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && (!strcmp(argv[1], "create") || !strcmp(argv[1], "stat") ||
			  !strcmp(argv[1], "unlink")))
		return files(argv[1], argv[2], number(argv[3]));
	if (argc == 5 && (!strcmp(argv[1], "write") || !strcmp(argv[1], "read")))
		return data(argv[1], argv[2], number(argv[3]), number(argv[4]));
	fprintf(stderr, "usage: floor create|stat|unlink DIR N | floor write|read FILE SIZE N\n");
	return 2;
}
