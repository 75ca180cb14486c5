/*
 * blkbench: block I/O benchmark for skvm's guests (built static into the
 * disk-tools initramfs by scripts/build-guest.sh).
 *
 *   blkbench DEVICE read|write|randread|randwrite BLOCK_BYTES SECONDS
 *
 * Opens DEVICE (a block device, or a regular file for a host baseline) with
 * O_DIRECT, issues one BLOCK_BYTES request at a time
 * (sequential from offset 0, wrapping; or at random block-aligned offsets)
 * for SECONDS, and prints one line:
 *
 *   BLKBENCH op=randread bs=4096 ops=N secs=S mb_per_s=X iops=Y
 *
 * A plain loop of pread/pwrite: on hosts whose KVM emulates guest kernel
 * code the figures measure the guest kernel as much as the device.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t next_random(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

int main(int argc, char **argv)
{
	const char *dev, *op;
	long bs;
	double secs, start, elapsed;
	uint64_t size = 0, blocks, ops = 0, seed = 0x9e3779b97f4a7c15ull;
	int fd, writing, random_offsets;
	void *buf;

	if (argc != 5) {
		fprintf(stderr, "usage: blkbench DEVICE read|write|randread|randwrite BLOCK_BYTES SECONDS\n");
		return 2;
	}
	dev = argv[1];
	op = argv[2];
	bs = strtol(argv[3], NULL, 10);
	secs = strtod(argv[4], NULL);
	writing = strcmp(op, "write") == 0 || strcmp(op, "randwrite") == 0;
	random_offsets = strncmp(op, "rand", 4) == 0;
	if ((!writing && strcmp(op, "read") != 0 && strcmp(op, "randread") != 0) ||
	    bs < 512 || bs % 512 != 0 || bs > (64L << 20) || secs <= 0) {
		fprintf(stderr, "blkbench: bad arguments\n");
		return 2;
	}
	fd = open(dev, (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0) {
		perror(dev);
		return 1;
	}
	/* A block device, or a regular file (for a host-side baseline). */
	if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
		struct stat st;

		if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
			perror(dev);
			return 1;
		}
		size = (uint64_t)st.st_size;
	}
	blocks = size / (uint64_t)bs;
	if (blocks == 0) {
		fprintf(stderr, "blkbench: %s is smaller than one block\n", dev);
		return 1;
	}
	if (posix_memalign(&buf, 4096, (size_t)bs) != 0) {
		fprintf(stderr, "blkbench: out of memory\n");
		return 1;
	}
	memset(buf, 0x5a, (size_t)bs);
	start = now();
	do {
		uint64_t block = random_offsets ? next_random(&seed) % blocks : ops % blocks;
		off_t off = (off_t)(block * (uint64_t)bs);
		ssize_t n = writing ? pwrite(fd, buf, (size_t)bs, off) : pread(fd, buf, (size_t)bs, off);

		if (n != bs) {
			perror("blkbench: I/O");
			return 1;
		}
		ops++;
		elapsed = now() - start;
	} while (elapsed < secs);
	if (writing && fsync(fd) != 0) {
		perror("blkbench: fsync");
		return 1;
	}
	elapsed = now() - start;
	printf("BLKBENCH op=%s bs=%ld ops=%llu secs=%.2f mb_per_s=%.2f iops=%.0f\n", op, bs,
	       (unsigned long long)ops, elapsed, (double)ops * (double)bs / elapsed / 1e6,
	       (double)ops / elapsed);
	return 0;
}
