#!/usr/bin/env bash
# Usage: scripts/fuzz.sh TARGET MINUTES
#        scripts/fuzz.sh --smoke [SECONDS]
#        scripts/fuzz.sh --list
#
# Runs one libFuzzer target (cargo-fuzz) for MINUTES minutes, or, with
# --smoke, every target for SECONDS seconds each (default 10; the test
# command runs this). Targets are in fuzz/fuzz_targets (docs/FUZZING.md):
#   ipc_request  a hostile message reaching a device (device-side decoder)
#   ipc_reply    a hostile device talking to the VMM (VMM-side decoder)
#   rng_queue    virtio-rng on arbitrary queue contents and guest memory
#   blk_queue    virtio-blk on arbitrary queue contents and guest memory
#   net_queue    virtio-net (receive and transmit) on arbitrary queue
#                contents and guest memory, a socket pair as its tap
#   console_queue  virtio-console (input and output) on arbitrary queue
#                contents and guest memory, a socket pair as its pty
#   vsock_queue  virtio-vsock (guest packets, then its answers and events)
#                on arbitrary queue contents and guest memory, with a host
#                client and a connector answer waiting or not
#   fs_requests  virtio-fs's FUSE server on a scratch share, hostile
#                request sequences; nothing outside the share may change
#   transport    the virtio-pci transport (the VMM's side) fed hostile
#                BAR and PCI-configuration accesses
#   remote_device  a hostile device's answers to the VMM's side of the
#                protocol (hello checks, expected answers, flood limit)
#   drive_e2e    fuzzed queues to sandboxed rng and blk device processes
#                through the harness (skvm drive --fuzz-stdin; needs
#                target/release/skvm, built here if missing)
#   snapshot_state  a hostile snapshot state file (skvm run --restore)
#   kernel_image    a hostile bzImage payload (skvm run --kernel decompressing it)
# Needs the nightly toolchain and cargo-fuzz; installs both the first time
# (cached in ~/.rustup and ~/.cargo). The corpus grows in fuzz/corpus/TARGET
# (not committed); a crash is written to fuzz/artifacts/TARGET/ and the run
# exits non-zero: fix it and keep the input as a unit test of the crate.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
targets=(ipc_request ipc_reply rng_queue blk_queue net_queue console_queue vsock_queue fs_requests transport remote_device drive_e2e snapshot_state kernel_image)

usage() {
	sed -n '2,4p' "$0" | sed 's/^# //' >&2
	exit 2
}

log() { echo "fuzz: $*" >&2; }

ensure_tools() {
	if ! rustup run nightly rustc --version >/dev/null 2>&1; then
		log "installing the nightly toolchain (libFuzzer needs its sanitizer flags)"
		rustup toolchain install nightly --profile minimal </dev/null
	fi
	if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
		log "installing cargo-fuzz"
		cargo +nightly install cargo-fuzz --locked </dev/null
	fi
	# drive_e2e drives the product's own binary.
	export SKVM_BIN=${SKVM_BIN:-$repo/target/release/skvm}
	if [ ! -x "$SKVM_BIN" ]; then
		log "building $SKVM_BIN"
		cargo build --release -q -p vmm </dev/null
	fi
}

# run TARGET SECONDS
run() {
	local target=$1 secs=$2
	mkdir -p "fuzz/corpus/$target"
	log "$target for ${secs}s"
	# Sanitizer builds live in fuzz/target, apart from the product's.
	cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
		-max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 </dev/null
}

case "${1:-}" in
--list)
	printf '%s\n' "${targets[@]}"
	;;
--smoke)
	secs=${2:-10}
	case "$secs" in '' | *[!0-9]*) usage ;; esac
	ensure_tools
	# One build of every target, then one target per core at a time, each
	# into a log of its own: a failing target's log is printed whole.
	cargo +nightly fuzz build --fuzz-dir fuzz </dev/null
	logs=$(mktemp -d)
	trap 'rm -rf "$logs"' EXIT
	jobs_max=$(nproc)
	pids=() names=()
	failed=()
	# wait_one: waits for the oldest running target and reports it.
	wait_one() {
		local t=${names[0]} rc=0
		wait "${pids[0]}" || rc=$?
		pids=("${pids[@]:1}") names=("${names[@]:1}")
		if [ "$rc" -ne 0 ]; then
			cat "$logs/$t" >&2
			log "$t FAILED (status $rc): its output is above"
			failed+=("$t")
		else
			log "$t: $(grep -m1 -o 'stat::number_of_executed_units: [0-9]*' "$logs/$t" || echo 'no stats'), passed"
		fi
	}
	for t in "${targets[@]}"; do
		[ "${#pids[@]}" -lt "$jobs_max" ] || wait_one
		run "$t" "$secs" >"$logs/$t" 2>&1 &
		pids+=($!) names+=("$t")
	done
	while [ "${#pids[@]}" -gt 0 ]; do wait_one; done
	if [ "${#failed[@]}" -gt 0 ]; then
		log "smoke run: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
		exit 1
	fi
	log "smoke run of ${#targets[@]} targets passed"
	;;
'' | -*)
	usage
	;;
*)
	target=$1
	minutes=${2:-}
	case "$minutes" in '' | *[!0-9]*) usage ;; esac
	[[ " ${targets[*]} " == *" $target "* ]] || {
		log "unknown target '$target'; targets: ${targets[*]}"
		exit 2
	}
	ensure_tools
	run "$target" $((minutes * 60))
	;;
esac
