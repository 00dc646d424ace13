#!/bin/sh
# Baseline: the naive loop, just as common: every interval, `ip route replace` for
# every AllowedIP of every up peer. Usage: naive_loop.sh IF CYCLES INTERVAL
IF=$1 CYCLES=$2 INTERVAL=$3
i=0
while [ "$i" -lt "$CYCLES" ]; do
	now=$(date +%s)
	for ip in $(wg show "$IF" dump | awk -v now="$now" 'NR > 1 && $5 > 0 && now - $5 < 180 { gsub(",", " ", $4); print $4 }'); do
		ip route replace "$ip" dev "$IF"
	done
	i=$((i + 1))
	[ "$i" -lt "$CYCLES" ] && sleep "$INTERVAL"
done
exit 0
