#!/bin/sh
# preflight.sh: what this host lets tools/capture/dpamt.bt capture, and the script it can load.
#
#   preflight.sh --check          list each probe: attached or absent, and what is lost without it
#   preflight.sh --script         print dpamt.bt keeping only the probes this host has, with a
#                                 header (# key=value lines) saying what was found and what is lost
#   preflight.sh --run [args]     the same, run by bpftrace -q (stdout: the capture)
#
# A probe is present when its function is traceable (available_filter_functions, else a text
# symbol in /proc/kallsyms) or its tracepoint directory exists. A missing required probe is an
# error (exit 1): the capture could not say what it must. Optional probes (static helpers that
# may be inlined, the VM-identity probes) are dropped with a header line naming what is lost.
# docs/capture.md has the table. POSIX sh + awk; needs root to read kallsyms addresses.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
SCRIPT=${DPAMT_SCRIPT:-$HERE/dpamt.bt}
TRACEFS=${TRACEFS:-/sys/kernel/tracing}
[ -d "$TRACEFS/events" ] || TRACEFS=/sys/kernel/debug/tracing
KALLSYMS=${KALLSYMS:-/proc/kallsyms}
MODE=${1:---check}

has_function() {
	if [ -r "$TRACEFS/available_filter_functions" ]; then
		grep -q -E "^$1( |\$)" "$TRACEFS/available_filter_functions" && return 0
		return 1
	fi
	# (a module's symbols end in a tab and [module]: "ffff... t name\t[kvm]")
	[ -r "$KALLSYMS" ] && grep -q -E " [tT] $1([[:space:]]|\$)" "$KALLSYMS"
}

has_probe() { # attach point
	case "$1" in
	kprobe:* | kretprobe:*) has_function "${1#*:}" ;;
	tracepoint:*)
		rest=${1#tracepoint:}
		[ -d "$TRACEFS/events/${rest%%:*}/${rest#*:}" ]
		;;
	*) return 1 ;;
	esac
}

# one line per probe: attach-point TAB required|optional TAB what-is-lost TAB present|absent
inventory() {
	sed -n -E 's#^/\* probe ([^ ]*) (required|optional): (.*) \*/$#\1\t\2\t\3#p' "$SCRIPT" |
		while IFS='	' read -r ap need lost; do
			if has_probe "$ap"; then st=present; else st=absent; fi
			printf '%s\t%s\t%s\t%s\n' "$ap" "$need" "$lost" "$st"
		done
}

INV=$(inventory)
MISSING=$(printf '%s\n' "$INV" | awk -F'\t' '$2=="required" && $4=="absent" {print $1}')
# vms_at_start: a TD created before the capture leaves regions whose refcount is unknown
VMS=$(ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c 'anon_inode:kvm-vm' || true)
PAGE_SIZE=$(bpftrace -e 'BEGIN { printf("%d\n", sizeof(struct page)); exit(); }' 2>/dev/null | tail -n 1 || true)
# (under kptr_restrict every address reads as zeros: then it is unreadable, not address 0)
VMEMMAP=$(awk '$3=="vmemmap_base" && $1 !~ /^0+$/ {print "0x" $1}' "$KALLSYMS" 2>/dev/null || true)
# Whether TDX is on in KVM (kvm_intel's tdx parameter) and the kernel said it enabled Dynamic
# PAMT: on a v6 kernel whose TDX module lacks it every probe still attaches, but tdx_pamt_get
# returns at once and KVM installs no top-up hook (a valid capture conform cannot match)
SYSMODULE=${SYSMODULE:-/sys/module}
TDX=$(cat "$SYSMODULE/kvm_intel/parameters/tdx" 2>/dev/null || echo unknown)
DMESG=${DMESG:-dmesg}
if LOG=$($DMESG 2>/dev/null); then
	if printf '%s\n' "$LOG" | grep -q -i 'dynamic pamt'; then DPAMT=seen; else DPAMT=not_seen; fi
else
	DPAMT=unknown
fi

header() {
	echo "# bpftrace=$(bpftrace --version 2>/dev/null | awk '{print $2}')"
	echo "# kernel=$(uname -r)"
	echo "# vms_at_start=$VMS"
	echo "# kvm_intel_tdx=$TDX"
	echo "# dpamt_in_dmesg=$DPAMT"
	[ -n "$PAGE_SIZE" ] && echo "# page_size=$PAGE_SIZE"
	printf '%s\n' "$INV" | awk -F'\t' '{ printf "# probe_%s=%s\n", $1, $4 }' | tr ':' '_' |
		sed 's/^# probe_\([a-z]*\)_/# probe_\1:/'
	printf '%s\n' "$INV" | awk -F'\t' '$4=="absent" { printf "# lost: %s (%s)\n", $3, $1 }'
}

case "$MODE" in
--check)
	printf '%s\n' "$INV" | awk -F'\t' '{ printf "%-8s %-9s %-45s %s\n", $4, $2, $1, ($4=="absent" ? "lost: " $3 : "") }'
	echo "vms_at_start=$VMS page_size=${PAGE_SIZE:-unknown} vmemmap_base=${VMEMMAP:-unreadable (no CONFIG_KALLSYMS_ALL, or kptr_restrict: pfns of control pages are derived, docs/capture.md)}"
	echo "kvm_intel_tdx=$TDX dpamt_in_dmesg=$DPAMT"
	[ "$TDX" = Y ] || echo "warning: kvm_intel's tdx parameter is $TDX, not Y: no TD can run, nothing to capture" >&2
	[ "$DPAMT" = seen ] || echo "warning: no 'Dynamic PAMT' line in dmesg ($DPAMT): if the TDX module lacks it, tdx_pamt_get returns at once and the capture shows no DPAMT work (docs/capture.md)" >&2
	if [ -n "$MISSING" ]; then
		echo "cannot capture: required probe(s) absent: $(echo $MISSING)" >&2
		exit 1
	fi
	;;
--script | --run)
	if [ -n "$MISSING" ]; then
		echo "cannot capture: required probe(s) absent: $(echo $MISSING)" >&2
		exit 1
	fi
	ABSENT=$(printf '%s\n' "$INV" | awk -F'\t' '$4=="absent" {print $1}')
	HDR=$(header | sed 's/\\/\\\\/g; s/"/\\"/g; s/%/%%/g' | awk '{ printf "\tprintf(\"%s\\n\");\n", $0 }')
	[ -n "$VMEMMAP" ] && HDR="$HDR
	printf(\"# vmemmap_base=0x%lx\\n\", *(uint64 *)$VMEMMAP);"
	OUT=$(mktemp)
	trap 'rm -f "$OUT"' EXIT
	ABSENT="$ABSENT" HDR="$HDR" awk '
		BEGIN { n = split(ENVIRON["ABSENT"], a, "\n"); for (i = 1; i <= n; i++) drop[a[i]] = 1 }
		/^\/\* probe / { if ($3 in drop) { skip = 1; next } }
		skip && /^}/ { skip = 0; next }
		skip { next }
		/\/\*@HEADER@\*\// { print ENVIRON["HDR"]; next }
		{ print }
	' "$SCRIPT" >"$OUT"
	if [ "$MODE" = --script ]; then cat "$OUT"; else shift; exec bpftrace -q "$@" "$OUT"; fi
	;;
*)
	echo "usage: $0 --check | --script | --run [bpftrace args]" >&2
	exit 2
	;;
esac
