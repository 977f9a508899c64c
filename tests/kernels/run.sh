#!/bin/bash
# The kernel-compatibility tier: boots Debian's current 6.1 and 6.12 cloud kernels under QEMU (TCG)
# and checks, inside each, that credwatch's file probes load and attach: the fast hook
# (fexit/security_file_open) by default; and, forced, the syscall tracepoints (with io_uring's
# opens taken as they complete) with the expected walk from descriptor to inode (6.1 has no bpf_rdonly_cast: the
# helper walk; 6.12: the kfunc walk, and the helper walk again when forced); each counts reads
# exactly through every descriptor-table shape.
# Run by `cargo xtask test` (as root); idempotent, kernels and the initramfs are cached.
#
#   tests/kernels/run.sh BIN_DIR     BIN_DIR holds credwatch and credwatch-probe-reader
#   OPENS=1000 TIMEOUT=600           opens per reader run; seconds per boot
#   EXTRA_APPEND=cw.expect=1         (checks the FAIL path: every run must fail)
#   BENCH=N                          instead of the tests: one "BENCH ..." line per kernel and file
#                                    hook, the hook's BPF run time per open and, if BIN_DIR has
#                                    credwatch-bench-loop, a non-endpoint TCP loop and TLS token
#                                    lookups (the C loop; Python's http.client and ssl server when
#                                    the host has python3) with and without the whole agent
#                                    (cargo xtask bench)
#   BENCH_ONLY="6.1 fexit"           with BENCH: only the kernels whose package name holds the
#                                    first word, only the hook named second (either may be *)
# Output: one "KERNEL ... PASS|FAIL" line per run; console logs in target/kernels/logs/.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$(cd "${1:?usage: run.sh BIN_DIR}" && pwd)
CACHE=${CREDWATCH_KERNEL_CACHE:-$ROOT/target/kernels}
OPENS=${OPENS:-1000}
EXTRA_APPEND=${EXTRA_APPEND:-}
TIMEOUT=${TIMEOUT:-600}
LOGS=$CACHE/logs
mkdir -p "$CACHE" "$LOGS"

# --- packages -------------------------------------------------------------------------------
need=()
for p in qemu-system-x86 busybox-static cpio zstd xz-utils lz4; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "kernels: installing ${need[*]}" >&2
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi

for b in credwatch credwatch-probe-reader; do
    [ -x "$BIN/$b" ] || { echo "$BIN/$b is missing (cargo build first)" >&2; exit 2; }
done

# --- kernels --------------------------------------------------------------------------------
# Extracts the uncompressed ELF vmlinux from a bzImage, for QEMU's PVH entry. The compressed payload's
# offset is in the x86 boot setup header (setup_sects at 0x1f1, payload_offset at 0x248); Debian's 6.1
# cloud kernel is LZ4 (legacy frame), 6.12 is zstd, others may be xz. Falls back to scanning for magics.
le32() { od -An -j "$2" -N4 -tu4 "$1" | tr -d ' '; }
decompress_at() { # decompress_at IMG OFFSET OUT
    local magic
    magic=$(od -An -j "$2" -N6 -tx1 "$1" | tr -d ' \n')
    case $magic in
        28b52ffd*) tail -c +$(($2 + 1)) "$1" | zstd -dc --long=31 >"$3" 2>/dev/null || true ;;
        fd377a585a00) tail -c +$(($2 + 1)) "$1" | xz -dc >"$3" 2>/dev/null || true ;;
        02214c18*) tail -c +$(($2 + 1)) "$1" | lz4 -dc >"$3" 2>/dev/null || true ;;
        1f8b*) tail -c +$(($2 + 1)) "$1" | gzip -dc >"$3" 2>/dev/null || true ;;
        *) : >"$3" ;;
    esac
    [ "$(head -c4 "$3" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]
}
extract_vmlinux() {
    local img=$1 out=$2 ss po off
    ss=$(od -An -j $((0x1f1)) -N1 -tu1 "$img" | tr -d ' ')
    [ "$ss" = 0 ] && ss=4
    po=$(le32 "$img" $((0x248)))
    if decompress_at "$img" $(((ss + 1) * 512 + po)) "$out.tmp"; then
        mv "$out.tmp" "$out"; return 0
    fi
    for magic in '\x28\xb5\x2f\xfd' '\xfd\x37\x7a\x58\x5a\x00' '\x02\x21\x4c\x18'; do
        for off in $(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1); do
            if decompress_at "$img" "$off" "$out.tmp"; then
                mv "$out.tmp" "$out"; return 0
            fi
        done
    done
    rm -f "$out.tmp"
    return 1
}

KERNELS=()
for meta in linux-image-cloud-amd64 linux-image-6.12-cloud-amd64; do
    resolve() { apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
    pkg=$(resolve)
    [ -n "$pkg" ] || { apt-get update >/dev/null && pkg=$(resolve); }
    [ -n "$pkg" ] || { echo "cannot resolve $meta to a kernel package" >&2; exit 2; }
    dir=$CACHE/$pkg
    if [ ! -s "$dir/vmlinux" ]; then
        mkdir -p "$dir"
        deb=$(ls "$CACHE"/"${pkg}"_*.deb 2>/dev/null | head -n1 || true)
        if [ -z "$deb" ]; then
            (cd "$CACHE" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
            deb=$(ls "$CACHE"/"${pkg}"_*.deb | head -n1)
        fi
        rm -rf "$dir/root"
        dpkg-deb -x "$deb" "$dir/root"
        img=$(ls "$dir"/root/boot/vmlinuz-* | head -n1)
        cp "$img" "$dir/vmlinuz"
        extract_vmlinux "$dir/vmlinuz" "$dir/vmlinux" || echo "warning: no vmlinux from $img; booting the bzImage" >&2
        rm -rf "$dir/root"
    fi
    KERNELS+=("$pkg")
done

# --- initramfs ------------------------------------------------------------------------------
INITRD=$CACHE/initramfs.cpio
# The benchmark's socket loop and empty-program floor go in when built (`cargo xtask bench` does),
# for the benchmark only.
EXTRA_BINS=()
if [ -n "${BENCH:-}" ]; then
    for b in credwatch-bench-loop credwatch-bench-floor; do
        if [ -x "$BIN/$b" ]; then EXTRA_BINS+=("$b"); fi
    done
fi
# The benchmark's Python TLS client and server (`xtask/bench/tls_*.py`, a real HTTP library
# over OpenSSL): the host's interpreter at its own path with only the modules they import, and
# the libraries those need.
PY=$(command -v python3 || true)
add_python() { # add_python ROOT
    [ -n "$PY" ] || { echo "kernels: no python3: the guest benchmark runs without its Python TLS loop" >&2; return 0; }
    local r=$1 f
    mkdir -p "$r/etc/bench"
    cp "$ROOT/xtask/bench/tls_client.py" "$ROOT/xtask/bench/tls_server.py" "$r/etc/bench/"
    for f in $("$PY" "$HERE/python_files.py" "$ROOT/xtask/bench/tls_client.py" "$ROOT/xtask/bench/tls_server.py"); do
        if [ -d "$f" ]; then mkdir -p "$r$f"; continue; fi
        mkdir -p "$r$(dirname "$f")"
        cp -L "$f" "$r$f"
        case $f in *.so | */bin/python3*) for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
            mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"
        done ;; esac
    done
    ln -sf "$("$PY" -c 'import sys, os; print(os.path.realpath(sys.executable))')" "$r/bin/python3"
}
stamp=$(cat "$HERE/init" "$HERE/python_files.py" "$ROOT"/xtask/bench/tls_*.py "$BIN/credwatch" "$BIN/credwatch-probe-reader" "${EXTRA_BINS[@]/#/$BIN/}" /bin/busybox | md5sum | cut -d' ' -f1)
if [ ! -s "$INITRD" ] || [ "$(cat "$INITRD.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$CACHE/rootfs"
    R=$CACHE/rootfs
    mkdir -p "$R"/{bin,sbin,dev,proc,sys,tmp,run,root,etc,creds}
    cp /bin/busybox "$R/bin/busybox"
    install -m755 "$HERE/init" "$R/init"
    # Strip debug info: the agent is >100 MB with it, which slows unpacking under TCG.
    strip --strip-debug -o "$R/bin/credwatch" "$BIN/credwatch"
    strip --strip-debug -o "$R/bin/credwatch-probe-reader" "$BIN/credwatch-probe-reader"
    for b in "${EXTRA_BINS[@]}"; do strip --strip-debug -o "$R/bin/$b" "$BIN/$b"; done
    for lib in $(for b in credwatch credwatch-probe-reader "${EXTRA_BINS[@]}"; do ldd "$BIN/$b"; done | grep -o '/[^ ]*' | sort -u); do
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done
    # The benchmark's TLS loop: the host's libssl (the loop dlopens it, so ldd does not list it)
    # and a throwaway certificate for its server.
    if [[ " ${EXTRA_BINS[*]} " == *" credwatch-bench-loop "* ]]; then
        for lib in libssl.so.3 libcrypto.so.3; do
            path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ {print $NF; exit}')
            if [ -n "$path" ]; then mkdir -p "$R$(dirname "$path")"; cp -L "$path" "$R$path"; fi
        done
        mkdir -p "$R/etc/bench"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 \
            -keyout "$R/etc/bench/key.pem" -out "$R/etc/bench/cert.pem" 2>/dev/null ||
            echo "kernels: no openssl CLI: the guest benchmark runs without its TLS loop" >&2
        add_python "$R"
    fi
    echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
    echo 'root:x:0:' >"$R/etc/group"
    printf '127.0.0.1 localhost\n' >"$R/etc/hosts"
    (cd "$R" && find . | cpio -o -H newc --quiet) >"$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    echo "$stamp" >"$INITRD.stamp"
    rm -rf "$R"
fi

# --- boots ----------------------------------------------------------------------------------
qemu() { # qemu PKG APPEND LOG: one boot of the guest, its console in LOG
    local kernel=$CACHE/$1/vmlinux
    [ -s "$kernel" ] || kernel=$CACHE/$1/vmlinuz
    # Several options in one variable: split on purpose.
    local cpu=${QEMU_CPU:-"-accel tcg,thread=multi -smp $(nproc)"}
    # shellcheck disable=SC2086
    timeout "$TIMEOUT" qemu-system-x86_64 $cpu -cpu max -m 1G \
        -display none -monitor none -serial stdio -no-reboot -net none \
        -kernel "$kernel" -initrd "$INITRD" \
        -append "console=ttyS0 panic=-1 quiet $2" </dev/null >"$3" 2>&1
}

boot() { # boot PKG EXTRA_APPEND LOGNAME
    local pkg=$1 extra=$2 log=$LOGS/$3.log start end rc line
    start=$(date +%s)
    qemu "$pkg" "cw.opens=$OPENS $EXTRA_APPEND $extra" "$log" && rc=0 || rc=$?
    end=$(date +%s)
    line=$(tr -d '\r' <"$log" | grep -a '^CWRESULT ' | tail -n1 | sed 's/^CWRESULT //')
    if [ -z "$line" ]; then
        line="KERNEL $pkg $extra FAIL: no result line (qemu rc=$rc; see $log)"
    fi
    echo "$line [$((end - start))s, log: $log]"
    case $line in *" PASS") return 0 ;; *) tr -d '\r' <"$log" | grep -a -A200 '^=== credwatch check' | head -n 200 >&2; return 1 ;; esac
}

# The walk each kernel must take: bpf_rdonly_cast exists from 6.2 on.
want_walk() {
    local v=${1#linux-image-} major minor
    major=${v%%.*}; minor=${v#*.}; minor=${minor%%[.-]*}
    if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 2 ]; }; then echo rdonly_cast; else echo helpers; fi
}

if [ -n "${BENCH:-}" ]; then
    # One vCPU with instruction counting: a guest nanosecond is one guest instruction, so the
    # guest's clocks (the BPF accounting's and the open loop's) count instructions, steadily.
    QEMU_CPU="-accel tcg,thread=single -icount shift=0,sleep=off -smp 1"
    status=0
    only=${BENCH_ONLY:-* *}; only_kernel=${only%% *}; only_hook=${only#* }
    for pkg in "${KERNELS[@]}"; do
        [[ "$only_kernel" = "*" || "$pkg" == *"-$only_kernel."* ]] || continue
        for hook in fexit tracepoints; do
            [[ "$only_hook" = "*" || "$hook" = "$only_hook" ]] || continue
            log=$LOGS/$pkg-bench-$hook.log
            flag=; [ "$hook" = tracepoints ] && flag="cw.hook=tracepoints"
            qemu "$pkg" "cw.bench=$BENCH $flag" "$log" || true
            line=$(tr -d '\r' <"$log" | grep -a '^CWBENCH ' | tail -n1 | sed 's/^CWBENCH //')
            if [ -n "$line" ]; then echo "BENCH $pkg $line"; else echo "BENCH $pkg hook=$hook FAIL (see $log)"; status=1; fi
        done
    done
    exit $status
fi

# Per kernel: the fast hook (chosen by default: both kernels allow BPF trampolines), then the
# tracepoint path forced, with the walk the kernel allows and (6.2+) the helper walk too. The
# same reads, io_uring's included, are expected from both paths.
status=0
for pkg in "${KERNELS[@]}"; do
    want=$(want_walk "$pkg")
    boot "$pkg" "cw.wanthook=fexit" "$pkg" || status=1
    tp="cw.hook=tracepoints cw.wanthook=tracepoints"
    boot "$pkg" "$tp cw.want=$want" "$pkg-tracepoints" || status=1
    if [ "$want" = rdonly_cast ]; then
        boot "$pkg" "$tp cw.walk=helpers cw.want=helpers" "$pkg-helpers" || status=1
    fi
done
exit $status
