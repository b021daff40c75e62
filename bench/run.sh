#!/usr/bin/env bash
# Load benchmark: a bare Caddy reverse_proxy against sitegate's bearer path, in one run.
#
#   bench/run.sh                  # 5 rounds of 10 s each, 64 connections
#   ROUNDS=3 DURATION=5s CONNECTIONS=32 bench/run.sh
#
# One sitegate binary serves both paths from one process pinned to CPU 0, so they share
# everything but the handler under test; the upstream, the identity emulator and wrk run on the
# other CPU. Rounds alternate bare and sitegate so drift hits both alike. The bearer path uses one
# token, so after the first request it is served from the verified-token cache (warm cache).
# Prints requests/s and p50/p99 latency per round, then medians and the ratio sitegate/bare.
# Needs wrk (Debian: apt-get install wrk) and curl; Linux for taskset.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
BARE=18080 GATE=18081 UPSTREAM=18091 IDENTITY=18090

for tool in wrk curl taskset; do
	command -v "$tool" >/dev/null || { echo "bench: $tool is required (Debian: apt-get install wrk curl util-linux)" >&2; exit 1; }
done

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "bench: building sitegate" >&2
go build -o "$work/sitegate" ./cmd/sitegate

cat >"$work/backend.Caddyfile" <<CFG
{
	admin off
	persist_config off
}
http://:$IDENTITY {
	bind 127.0.0.1
	identity_emulator {
		issuer http://127.0.0.1:$IDENTITY
		client bench-app bench-secret
		client_token_lifetime 24h
	}
}
http://:$UPSTREAM {
	bind 127.0.0.1
	respond "ok"
}
CFG

cat >"$work/proxy.Caddyfile" <<CFG
{
	admin off
	persist_config off
}
http://:$BARE {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:$UPSTREAM
}
http://:$GATE {
	bind 127.0.0.1
	sitegate {
		issuer   http://127.0.0.1:$IDENTITY/oauth2/default
		audience api://default
		jwks     http://127.0.0.1:$IDENTITY/oauth2/default/v1/keys
		site_context {
			account 5f689caa4216e7000750d1ef
			channel 12
			stage   production
		}
		identity_header X-User-Id {http.auth.user.id}
	}
	reverse_proxy 127.0.0.1:$UPSTREAM
}
CFG

taskset -c "$LOAD_CPU" "$work/sitegate" run --config "$work/backend.Caddyfile" >"$work/backend.log" 2>&1 &
pids+=($!)
taskset -c "$PROXY_CPU" "$work/sitegate" run --config "$work/proxy.Caddyfile" >"$work/proxy.log" 2>&1 &
pids+=($!)

wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "bench: $1 did not come up" >&2; exit 1; }
wait_for "http://127.0.0.1:$UPSTREAM/"
wait_for "http://127.0.0.1:$BARE/"

token="$(curl -s -u bench-app:bench-secret -d grant_type=client_credentials -d scope=s2s \
	"http://127.0.0.1:$IDENTITY/oauth2/default/v1/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
[ -n "$token" ] || { echo "bench: no token from the emulator" >&2; exit 1; }
for _ in $(seq 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$GATE/")" = 200 ] && break
	sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$GATE/")" = 200 ] ||
	{ echo "bench: the sitegate path does not answer 200" >&2; exit 1; }

# run PORT [header]: prints "requests/s p50_ms p99_ms" for one wrk run.
run() {
	local args=(-t1 -c"$CONNECTIONS" -d"$DURATION" --latency)
	[ -n "${2:-}" ] && args+=(-H "$2")
	taskset -c "$LOAD_CPU" wrk "${args[@]}" "http://127.0.0.1:$1/" | awk '
		function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
		/Requests\/sec/ { rps = $2 }
		$1 == "50%" { p50 = ms($2) }
		$1 == "99%" { p99 = ms($2) }
		/Non-2xx/ { bad = $NF }
		END { if (bad) { print "bench: non-2xx answers: " bad > "/dev/stderr"; exit 1 }; printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "bench: warming up" >&2
run "$BARE" >/dev/null
run "$GATE" "Authorization: Bearer $token" >/dev/null

printf '%-6s %-9s %12s %10s %10s\n' round path "requests/s" "p50 ms" "p99 ms"
: >"$work/bare" && : >"$work/gate"
for i in $(seq "$ROUNDS"); do
	read -r rps p50 p99 < <(run "$BARE")
	printf '%-6s %-9s %12s %10s %10s\n' "$i" bare "$rps" "$p50" "$p99"
	echo "$rps $p50 $p99" >>"$work/bare"
	read -r rps p50 p99 < <(run "$GATE" "Authorization: Bearer $token")
	printf '%-6s %-9s %12s %10s %10s\n' "$i" sitegate "$rps" "$p50" "$p99"
	echo "$rps $p50 $p99" >>"$work/gate"
done

col() { awk -v c="$2" '{ print $c }' "$1" | median; }
b_rps=$(col "$work/bare" 1) g_rps=$(col "$work/gate" 1)
b_p50=$(col "$work/bare" 2) g_p50=$(col "$work/gate" 2)
b_p99=$(col "$work/bare" 3) g_p99=$(col "$work/gate" 3)
echo
printf 'median   bare      %10.0f req/s  p50 %.3f ms  p99 %.3f ms\n' "$b_rps" "$b_p50" "$b_p99"
printf 'median   sitegate  %10.0f req/s  p50 %.3f ms  p99 %.3f ms\n' "$g_rps" "$g_p50" "$g_p99"
awk -v g="$g_rps" -v b="$b_rps" -v gp="$g_p99" -v bp="$b_p99" \
	'BEGIN { printf "ratio sitegate/bare: %.3f (goal >= 0.95); p99 added: %.3f ms (goal < 0.2)\n", g / b, gp - bp }'
