#!/usr/bin/env bash
# Load benchmark: a bare Caddy reverse_proxy against sitegate's bearer path, in one run.
#
#   bench/run.sh                  # 5 rounds of 10 s each, 64 connections
#   ROUNDS=3 DURATION=5s CONNECTIONS=32 bench/run.sh
#
# One sitegate binary serves both paths from one process pinned to CPU 0, so they share
# everything but the handler under test; the upstream, the identity emulator and wrk run on the
# other CPU. Rounds alternate bare and sitegate so drift hits both alike. Both get the very same
# request, bearer token included, so the difference is sitegate's work alone; the bearer path
# uses one token, so after the first request it is served from the verified-token cache (warm
# cache).
#
# Each round measures throughput under load (CONNECTIONS connections) and then latency with one
# connection (no queueing: the latency a request actually pays). Prints both per round, then
# medians, the throughput ratio sitegate/bare and the p99 latency sitegate adds.
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
proxy=$!
pids+=("$proxy")

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

# cpu_ticks: the CPU time (user + system, in clock ticks) the proxy process has used.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$proxy/stat"; }
hz=$(getconf CLK_TCK)

# run PORT CONNECTIONS: prints "requests/s p50_ms p99_ms cpu_us_per_request" for one wrk run.
# CPU per request is the proxy's own CPU time over the requests served: unlike requests/s, a
# noisy neighbour on a shared VM barely moves it.
run() {
	local args=(-t1 -c"$2" -d"$DURATION" --latency -H "Authorization: Bearer $token") before
	before=$(cpu_ticks)
	taskset -c "$LOAD_CPU" wrk "${args[@]}" "http://127.0.0.1:$1/" | awk -v before="$before" -v hz="$hz" -v stat="/proc/$proxy/stat" '
		function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
		/Requests\/sec/ { rps = $2 }
		/requests in/ { total = $1 }
		$1 == "50%" { p50 = ms($2) }
		$1 == "99%" { p99 = ms($2) }
		/Non-2xx/ { bad = $NF }
		END {
			if (bad) { print "bench: non-2xx answers: " bad > "/dev/stderr"; exit 1 }
			getline line < stat; split(line, f, " "); after = f[14] + f[15]
			printf "%.0f %.3f %.3f %.1f\n", rps, p50, p99, (after - before) / hz * 1e6 / total
		}'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "bench: warming up" >&2
run "$BARE" "$CONNECTIONS" >/dev/null
run "$GATE" "$CONNECTIONS" >/dev/null

printf '%-6s %-9s %-11s %12s %10s %10s %12s\n' round path connections "requests/s" "p50 ms" "p99 ms" "CPU us/req"
for f in bare gate bare1 gate1; do : >"$work/$f"; done
for i in $(seq "$ROUNDS"); do
	for path in bare gate; do
		port=$BARE name=bare
		[ "$path" = gate ] && port=$GATE name=sitegate
		for c in "$CONNECTIONS" 1; do
			read -r rps p50 p99 cpu < <(run "$port" "$c")
			printf '%-6s %-9s %-11s %12s %10s %10s %12s\n' "$i" "$name" "$c" "$rps" "$p50" "$p99" "$cpu"
			out="$work/$path"
			[ "$c" = 1 ] && out="$work/${path}1"
			echo "$rps $p50 $p99 $cpu" >>"$out"
		done
	done
done

col() { awk -v c="$2" '{ print $c }' "$work/$1" | median; }
echo
for path in bare gate; do
	name=bare
	[ "$path" = gate ] && name=sitegate
	printf 'median %-9s %6.0f req/s and %.1f us CPU/request at %s connections; one connection: p50 %.3f ms, p99 %.3f ms\n' \
		"$name" "$(col "$path" 1)" "$(col "$path" 4)" "$CONNECTIONS" "$(col "${path}1" 2)" "$(col "${path}1" 3)"
done
awk -v g="$(col gate 1)" -v b="$(col bare 1)" -v gc="$(col gate 4)" -v bc="$(col bare 4)" -v gp="$(col gate1 3)" -v bp="$(col bare1 3)" \
	'BEGIN {
		printf "ratio sitegate/bare: %.3f by requests/s, %.3f by CPU per request (goal >= 0.95)\n", g / b, bc / gc
		printf "p99 added on one connection: %.3f ms (goal < 0.2)\n", gp - bp
	}'
