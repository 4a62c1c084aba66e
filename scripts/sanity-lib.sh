# Shared by csi-sanity.sh and csi-sanity-split.sh (sourced, not run): stop a
# process, wait for a socket, start a node's data plane, sweep what a failed
# run left under $work, and read csi-sanity's summary.

# $1: pid; TERM, then KILL after 10 s.
stop_pid() {
    local pid=$1
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

# $1: socket; $2: pid of the process that binds it.
wait_socket() {
    for _ in $(seq 300); do
        [[ -S $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Starts `floe-dataplane holder` and `serve` for a node in $1 (run dir
# $1/run, data dir $1/data, logs $1/holder.log and $1/serve.log); sets
# holder_pid and serve_pid. Fails when either does not come up.
start_dataplane() {
    local dir=$1
    "$dataplane_bin" holder --run-dir "$dir/run" >"$dir/holder.log" 2>&1 &
    holder_pid=$!
    wait_socket "$dir/run/holder.sock" "$holder_pid" || return 1
    "$dataplane_bin" serve --data-dir "$dir/data" --run-dir "$dir/run" >"$dir/serve.log" 2>&1 &
    serve_pid=$!
    wait_socket "$dir/run/dataplane.sock" "$serve_pid"
}

# Whatever a failed run left under $work. The loop devices are found first,
# while their FUSE files are still mounted (once a FUSE mount is detached
# the kernel names its file "/volume" and the path no longer matches), then
# everything under $work is unmounted (deepest first), then the loop devices
# are detached.
sweep() {
    local m f dev loops
    for _ in 1 2 3; do
        loops=()
        for f in /sys/block/loop*/loop/backing_file; do
            [[ -r $f ]] || continue
            if [[ $(<"$f") == "$work"/* ]]; then
                dev=${f#/sys/block/}
                loops+=("/dev/${dev%%/*}")
            fi
        done
        while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done < <(awk -v w="$work" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r)
        for dev in "${loops[@]}"; do
            losetup -d "$dev" 2>/dev/null || true
        done
    done
}

# Prints the specs csi-sanity skipped in log $2 under label $1 and sets
# `summary` to its spec counts ("Ran 77 of 96 Specs ... -- 77 Passed | ...").
read_summary() {
    local label=$1 log=$2 ran counts
    ran=$(grep -E '^Ran [0-9]+ of [0-9]+ Specs' "$log" | tail -1 || true)
    counts=$(grep -E '[0-9]+ Passed \| [0-9]+ Failed' "$log" | tail -1 || true)
    summary="${ran:-no summary} ${counts:+-- ${counts#*-- }}"
    echo "csi-sanity[$label]: skipped specs:" >&2
    grep -E -A1 '^S \[SKIPPED\]' "$log" | grep -E -v '^(S \[SKIPPED\]|--)' | sed 's/^/    /' | sort | uniq -c >&2 || true
}
