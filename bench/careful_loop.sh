#!/bin/sh
# Baseline: the careful loop people write by hand. Every interval: `wg show IF dump`,
# compare with the previous cycle, and `ip route replace` / `ip route del` only for
# peers whose state changed. Usage: careful_loop.sh IF CYCLES INTERVAL STATEFILE
# (STATEFILE keeps the previous cycle across runs: the first run converges)
IF=$1 CYCLES=$2 INTERVAL=$3 prev=$4
[ -e "$prev" ] || : > "$prev"
cur=$(mktemp)
trap 'rm -f "$cur"' EXIT
i=0
while [ "$i" -lt "$CYCLES" ]; do
	now=$(date +%s)
	wg show "$IF" dump | awk -v now="$now" 'NR > 1 { up = ($5 > 0 && now - $5 < 180) ? 1 : 0; print $1, up, $4 }' \
		| sort > "$cur"
	# SEED=1: only record this cycle as the previous one (a bench set-up step)
	[ -n "${SEED:-}" ] && { mv "$cur" "$prev"; exit 0; }
	# lines that differ from the previous cycle: peers that came up or went down
	comm -13 "$prev" "$cur" | while read -r key up ips; do
		for ip in $(echo "$ips" | tr ',' ' '); do
			if [ "$up" = 1 ]; then ip route replace "$ip" dev "$IF"; else ip route del "$ip" dev "$IF" 2>/dev/null; fi
		done
	done
	mv "$cur" "$prev"; cur=$(mktemp)
	i=$((i + 1))
	[ "$i" -lt "$CYCLES" ] && sleep "$INTERVAL"
done
exit 0
