#!/usr/bin/env bash
# Applies tuning/sysctl.conf to the running kernel. Idempotent: a key already at its
# value is left alone. Prints each key's value before and after, and says why a key
# could not be set (read-only in a container, unknown on this kernel) instead of failing.
# Usage: sudo tuning/apply.sh [--dry-run] [path/to/sysctl.conf]
set -u

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
conf="${1:-$(dirname "$0")/sysctl.conf}"
[ -r "$conf" ] || { echo "apply.sh: cannot read $conf" >&2; exit 2; }

# Ceilings: a host already above the wanted value keeps its higher one (field by field).
raise_only=" fs.file-max fs.nr_open net.ipv4.tcp_max_tw_buckets net.core.somaxconn net.ipv4.tcp_max_syn_backlog \
net.core.netdev_max_backlog net.core.rmem_max net.core.wmem_max net.ipv4.tcp_max_orphans fs.epoll.max_user_watches vm.max_map_count net.netfilter.nf_conntrack_max \
net.netfilter.nf_conntrack_buckets net.ipv4.tcp_mem "

# For a raise-only key: the wanted value with every field at least the host's (tcp_mem's
# three numbers are raised one by one). Prints nothing when the fields do not line up.
raised() {
    local -a b w
    read -ra b <<<"$1"; read -ra w <<<"$2"
    [ "${#b[@]}" -eq "${#w[@]}" ] || return 0
    local i out=()
    for i in "${!w[@]}"; do
        [[ "${b[$i]}" =~ ^[0-9]+$ && "${w[$i]}" =~ ^[0-9]+$ ]] || return 0
        if [ "${b[$i]}" -gt "${w[$i]}" ]; then out+=("${b[$i]}"); else out+=("${w[$i]}"); fi
    done
    echo "${out[*]}"
}

changed=0 same=0 failed=0
printf '%-34s %-28s %-28s %s\n' key before after result
while IFS= read -r line; do
    line="${line%%#*}"
    [[ "$line" =~ ^[[:space:]]*$ ]] && continue
    key="$(echo "${line%%=*}" | xargs)"
    want="$(echo "${line#*=}" | xargs)"
    path="/proc/sys/${key//.//}"
    if [ ! -e "$path" ]; then
        printf '%-34s %-28s %-28s %s\n' "$key" "-" "-" "unknown on this kernel"
        failed=$((failed + 1)); continue
    fi
    before="$(xargs < "$path")"
    if [ "$before" = "$want" ]; then
        printf '%-34s %-28s %-28s %s\n' "$key" "$before" "$before" "already set"
        same=$((same + 1)); continue
    fi
    if [[ "$raise_only" == *" $key "* ]]; then
        up="$(raised "$before" "$want")"
        if [ "$up" = "$before" ]; then
            printf '%-34s %-28s %-28s %s\n' "$key" "$before" "$before" "already higher; kept"
            same=$((same + 1)); continue
        fi
        [ -n "$up" ] && want="$up"
    fi
    if [ "$dry_run" = 1 ]; then
        printf '%-34s %-28s %-28s %s\n' "$key" "$before" "$want" "would set"
        continue
    fi
    if err="$(echo "$want" > "$path" 2>&1)"; then
        after="$(xargs < "$path")"
        printf '%-34s %-28s %-28s %s\n' "$key" "$before" "$after" "set"
        changed=$((changed + 1))
    else
        printf '%-34s %-28s %-28s %s\n' "$key" "$before" "$before" "NOT SET: ${err##*: }"
        failed=$((failed + 1))
    fi
done < "$conf"
echo "apply.sh: $changed set, $same already set, $failed not settable here"
echo "apply.sh: per-process fd limit is separate: soft $(ulimit -Sn), hard $(ulimit -Hn) (raise the hard one with LimitNOFILE= or limits.conf)"
