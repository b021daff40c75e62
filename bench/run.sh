#!/usr/bin/env bash
# Load benchmark: a bare Caddy reverse_proxy against sitegate's bearer path, its session path
# (sessions in Redis) and the sidecar, in one run.
#
#   bench/run.sh                  # 5 rounds of 10 s each, 64 connections
#   ROUNDS=3 DURATION=5s CONNECTIONS=32 bench/run.sh
#   PROFILE=sidecar bench/run.sh  # also a CPU profile of the proxy under load on one path
#
# One sitegate binary serves all paths from one process pinned to CPU 0, so they share
# everything but the handler under test; the upstream, the identity emulator, Redis and wrk run
# on the other CPU. Rounds alternate bare, bearer and session so drift hits them alike. Bare and
# bearer get the very same request, bearer token included, so the difference is sitegate's work
# alone; the bearer path uses one token, so after the first request it is served from the
# verified-token cache (warm cache). The session path gets one session cookie instead (one login
# before the rounds): every request loads the session from Redis (a GET), opens its sealed tokens
# and forwards with the session's access token; the emulator's access tokens last 24h, so no
# refresh happens during the run. The sidecar path gets the request an application sends, with no
# credential: sitegate_service adds the system app's token (client_credentials, fetched once at
# start; it lasts 24h) and x-site-context; the emulator's token calls are counted over the rounds.
# Its baseline is bare-plain: the bare reverse_proxy given that same request (the bearer the
# bare path gets is a larger request to read, which would flatter the sidecar).
#
# Each round measures throughput under load (CONNECTIONS connections) and then latency with one
# connection (no queueing: the latency a request actually pays). Prints both per round, then
# medians, the throughput ratios sitegate/bare, the p99 latency sitegate adds, and for the
# session path the Redis commands per request (INFO commandstats before and after each run) and
# redis-server's own CPU per request (on the load CPU).
# Needs wrk (Debian: apt-get install wrk) and curl; Linux for taskset. Without redis-server and
# redis-cli (Debian: apt-get install redis-server) the session path is skipped.
#
# PROFILE=bare|sitegate|session|sidecar turns on the proxy's admin endpoint (127.0.0.1:$ADMIN_PORT) and,
# after the rounds, takes a CPU profile (PROFILE_SECONDS, default 10) of the proxy under load on
# that path into PROFILE_OUT (default /tmp/sitegate-<path>.pprof): go tool pprof -top <file>.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
REDIS_PORT="${REDIS_PORT:-18092}"
ADMIN_PORT="${ADMIN_PORT:-18099}"
PROFILE="${PROFILE:-}"
PROFILE_SECONDS="${PROFILE_SECONDS:-10}"
BARE=18080 GATE=18081 SESSION=18082 SIDECAR=18083 UPSTREAM=18091 IDENTITY=18090
ACCOUNT=5f689caa4216e7000750d1ef

for tool in wrk curl taskset; do
	command -v "$tool" >/dev/null || { echo "bench: $tool is required (Debian: apt-get install wrk curl util-linux)" >&2; exit 1; }
done
sessions=1
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
	sessions=0
	echo "bench: redis-server or redis-cli not found (Debian: apt-get install redis-server): skipping the session path" >&2
fi
case "$PROFILE" in
"" | bare | sitegate | sidecar) ;;
session) [ "$sessions" = 1 ] || { echo "bench: PROFILE=session needs redis-server" >&2; exit 1; } ;;
*) echo "bench: PROFILE is bare, sitegate, session or sidecar, not $PROFILE" >&2; exit 1 ;;
esac

work="$(mktemp -d "${TMPDIR:-/tmp}/sitegate-bench.XXXXXX")"
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
		api_key bench-api-key
		user bench bench-password account $ACCOUNT
		client bench-app bench-secret
		access_lifetime 24h
		client_token_lifetime 24h
	}
}
http://:$UPSTREAM {
	bind 127.0.0.1
	respond "ok"
}
CFG

admin="admin off"
[ -n "$PROFILE" ] && admin="admin 127.0.0.1:$ADMIN_PORT"
cat >"$work/proxy.Caddyfile" <<CFG
{
	$admin
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
			account $ACCOUNT
			channel 12
			stage   production
		}
		identity_header X-User-Id {http.auth.user.id}
	}
	reverse_proxy 127.0.0.1:$UPSTREAM
}
http://:$SIDECAR {
	bind 127.0.0.1
	sitegate_service {
		identity oauth2 http://127.0.0.1:$IDENTITY/oauth2/ausbench {
			client_id bench-app
			client_secret bench-secret
		}
		site_context {
			account $ACCOUNT
			channel 12
			stage   production
		}
	}
	reverse_proxy 127.0.0.1:$UPSTREAM
}
CFG
if [ "$sessions" = 1 ]; then
	# A fresh sealing key every run: sessions of an earlier run cannot be opened, nor are they kept
	# (Redis runs without persistence).
	session_key="$(head -c32 /dev/urandom | base64)"
	cat >>"$work/proxy.Caddyfile" <<CFG
http://:$SESSION {
	bind 127.0.0.1
	sitegate {
		site_context {
			account $ACCOUNT
			channel 12
			stage   production
		}
		identity_header X-User-Id {http.auth.user.id}
		identity fabric_v1 http://127.0.0.1:$IDENTITY {
			api_key bench-api-key
		}
		session {
			store redis redis://127.0.0.1:$REDIS_PORT/0
			key $session_key
		}
	}
	reverse_proxy 127.0.0.1:$UPSTREAM
}
CFG
	taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --save '' --appendonly no --bind 127.0.0.1 \
		--daemonize no >"$work/redis.log" 2>&1 &
	redis=$!
	pids+=("$redis")
	for _ in $(seq 100); do
		[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
		sleep 0.1
	done
	[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] ||
		{ echo "bench: redis-server did not come up on port $REDIS_PORT:" >&2; cat "$work/redis.log" >&2; exit 1; }
fi

taskset -c "$LOAD_CPU" "$work/sitegate" run --config "$work/backend.Caddyfile" >"$work/backend.log" 2>&1 &
pids+=($!)
taskset -c "$PROXY_CPU" "$work/sitegate" run --config "$work/proxy.Caddyfile" >"$work/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")

wait_for() {
	for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
	echo "bench: $1 did not come up" >&2
	tail -n 20 "$work/proxy.log" "$work/backend.log" >&2
	exit 1
}
wait_for "http://127.0.0.1:$UPSTREAM/"
wait_for "http://127.0.0.1:$BARE/"

token="$(curl -s -u bench-app:bench-secret -d grant_type=client_credentials -d scope=s2s \
	"http://127.0.0.1:$IDENTITY/oauth2/default/v1/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
[ -n "$token" ] || { echo "bench: no token from the emulator" >&2; exit 1; }
bearer="Authorization: Bearer $token"
for _ in $(seq 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' -H "$bearer" "http://127.0.0.1:$GATE/")" = 200 ] && break
	sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "$bearer" "http://127.0.0.1:$GATE/")" = 200 ] ||
	{ echo "bench: the sitegate path does not answer 200" >&2; exit 1; }
plain="X-Request-Source: bench" # the sidecar's callers send no credential
for _ in $(seq 100); do # the sidecar's first fetch may have met the emulator still starting
	[ "$(curl -s -o /dev/null -w '%{http_code}' -H "$plain" "http://127.0.0.1:$SIDECAR/")" = 200 ] && break
	sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "$plain" "http://127.0.0.1:$SIDECAR/")" = 200 ] ||
	{ echo "bench: the sidecar path does not answer 200" >&2; tail -n 20 "$work/proxy.log" >&2; exit 1; }

# token_calls: the emulator's client_credentials calls so far (the sidecar's token fetches).
token_calls() {
	curl -s "http://127.0.0.1:$IDENTITY/_emulator/calls" | sed -n 's/.*"oauth2.token.client_credentials":\([0-9]*\).*/\1/p' | sed 's/^$/0/'
}

if [ "$sessions" = 1 ]; then
	# One login; every session request then sends its cookie.
	sid="$(curl -s -D - -o "$work/login.json" -H 'Content-Type: application/json' \
		-d '{"username":"bench","password":"bench-password"}' "http://127.0.0.1:$SESSION/.sitegate/login" |
		tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: __Host-sitegate=\([^;]*\).*/\1/p')"
	[ -n "$sid" ] || { echo "bench: the login did not set a session cookie:" >&2; cat "$work/login.json" >&2; tail -n 20 "$work/proxy.log" >&2; exit 1; }
	cookie="Cookie: __Host-sitegate=$sid"
	code="$(curl -s -o "$work/answer" -w '%{http_code}' -H "$cookie" "http://127.0.0.1:$SESSION/")"
	[ "$code" = 200 ] || { echo "bench: the session path answers $code:" >&2; cat "$work/answer" >&2; exit 1; }
fi

# cpu_ticks [PID]: the CPU time (user + system, in clock ticks) the proxy process (or PID) has used.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/${1:-$proxy}/stat"; }
hz=$(getconf CLK_TCK)

# redis_calls: the commands Redis has executed so far (INFO commandstats, INFO itself left out;
# commands that scripts run count too).
redis_calls() {
	redis-cli -p "$REDIS_PORT" info commandstats |
		awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" { n += $3 } END { printf "%d\n", n }'
}

# run PORT CONNECTIONS HEADER: prints "requests/s p50_ms p99_ms cpu_us_per_request requests"
# for one wrk run. CPU per request is the proxy's own CPU time over the requests served: unlike
# requests/s, a noisy neighbour on a shared VM barely moves it.
run() {
	local args=(-t1 -c"$2" -d"$DURATION" --latency -H "$3") before
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
			printf "%.0f %.3f %.3f %.1f %d\n", rps, p50, p99, (after - before) / hz * 1e6 / total, total
		}'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

paths=(bare gate plain side)
[ "$sessions" = 1 ] && paths+=(sess)
# describe PATH: sets port, name and header for a path.
describe() {
	case "$1" in
	bare) port=$BARE name=bare header=$bearer ;;
	gate) port=$GATE name=sitegate header=$bearer ;;
	sess) port=$SESSION name=session header=$cookie ;;
	plain) port=$BARE name=bare-plain header=$plain ;;
	side) port=$SIDECAR name=sidecar header=$plain ;;
	esac
}

echo "bench: warming up" >&2
for path in "${paths[@]}"; do
	describe "$path"
	run "$port" "$CONNECTIONS" "$header" >/dev/null
done

fetches_before=$(token_calls)
printf '%-6s %-9s %-11s %12s %10s %10s %12s %11s\n' round path connections "requests/s" "p50 ms" "p99 ms" "CPU us/req" "redis/req"
for path in "${paths[@]}"; do : >"$work/$path"; : >"$work/${path}1"; done
for i in $(seq "$ROUNDS"); do
	for path in "${paths[@]}"; do
		describe "$path"
		for c in "$CONNECTIONS" 1; do
			[ "$path" = sess ] && calls=$(redis_calls) rticks=$(cpu_ticks "$redis")
			read -r rps p50 p99 cpu total < <(run "$port" "$c" "$header")
			perreq=- rcpu=-
			if [ "$path" = sess ]; then
				read -r perreq rcpu < <(awk -v a="$(redis_calls)" -v b="$calls" -v ta="$(cpu_ticks "$redis")" -v tb="$rticks" -v hz="$hz" -v n="$total" \
					'BEGIN { printf "%.3f %.1f\n", (a - b) / n, (ta - tb) / hz * 1e6 / n }')
			fi
			printf '%-6s %-9s %-11s %12s %10s %10s %12s %11s\n' "$i" "$name" "$c" "$rps" "$p50" "$p99" "$cpu" "$perreq"
			out="$work/$path"
			[ "$c" = 1 ] && out="$work/${path}1"
			echo "$rps $p50 $p99 $cpu $perreq $rcpu" >>"$out"
		done
	done
done

fetches=$(($(token_calls) - fetches_before))

col() { awk -v c="$2" '{ print $c }' "$work/$1" | median; }
echo
for path in "${paths[@]}"; do
	describe "$path"
	printf 'median %-9s %6.0f req/s and %.1f us CPU/request at %s connections; one connection: p50 %.3f ms, p99 %.3f ms\n' \
		"$name" "$(col "$path" 1)" "$(col "$path" 4)" "$CONNECTIONS" "$(col "${path}1" 2)" "$(col "${path}1" 3)"
done
awk -v g="$(col gate 1)" -v b="$(col bare 1)" -v gc="$(col gate 4)" -v bc="$(col bare 4)" -v gp="$(col gate1 3)" -v bp="$(col bare1 3)" \
	'BEGIN {
		printf "ratio sitegate/bare: %.3f by requests/s, %.3f by CPU per request (goal >= 0.95)\n", g / b, bc / gc
		printf "p99 added on one connection: %.3f ms (goal < 0.2)\n", gp - bp
	}'
awk -v s="$(col side 1)" -v b="$(col plain 1)" -v sc="$(col side 4)" -v bc="$(col plain 4)" -v sp="$(col side1 3)" -v bp="$(col plain1 3)" -v f="$fetches" \
	'BEGIN {
		printf "ratio sidecar/bare-plain: %.3f by requests/s, %.3f by CPU per request (goal >= 0.95)\n", s / b, bc / sc
		printf "p99 added by the sidecar on one connection: %.3f ms\n", sp - bp
		printf "identity calls during the rounds: %d (goal 0 once warm)\n", f
	}'
if [ "$sessions" = 1 ]; then
	awk -v s="$(col sess 1)" -v b="$(col bare 1)" -v sc="$(col sess 4)" -v bc="$(col bare 4)" -v sp="$(col sess1 3)" -v bp="$(col bare1 3)" \
		-v r="$(col sess 5)" -v r1="$(col sess1 5)" -v rc="$(col sess 6)" -v c="$CONNECTIONS" \
		'BEGIN {
			printf "ratio session/bare: %.3f by requests/s, %.3f by CPU per request (goal >= 0.85); %.1f us more CPU per request\n", s / b, bc / sc, sc - bc
			printf "p99 added by the session path on one connection: %.3f ms\n", sp - bp
			printf "redis commands/request: %.3f at %s connections, %.3f at one connection (goal <= 1)\n", r, c, r1
			printf "redis-server CPU per request (on the load CPU, not counted above): %.1f us at %s connections\n", rc, c
		}'
else
	echo "session path skipped: no redis-server"
fi

if [ -n "$PROFILE" ]; then
	case "$PROFILE" in bare) p=bare ;; sitegate) p=gate ;; session) p=sess ;; sidecar) p=side ;; esac
	describe "$p"
	out="${PROFILE_OUT:-/tmp/sitegate-$PROFILE.pprof}"
	echo "bench: profiling the $name path for ${PROFILE_SECONDS}s into $out" >&2
	taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$((PROFILE_SECONDS + 2))s" -H "$header" "http://127.0.0.1:$port/" >"$work/profile.wrk" &
	load=$!
	sleep 1
	curl -s -o "$out" "http://127.0.0.1:$ADMIN_PORT/debug/pprof/profile?seconds=$PROFILE_SECONDS"
	wait "$load"
	rps=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$work/profile.wrk")
	echo "profile of the $name path: $out, taken at $rps req/s: a function's cumulative seconds / $((rps * PROFILE_SECONDS)) requests is its CPU per request (go tool pprof -top -cum $out)"
fi
