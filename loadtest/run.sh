#!/usr/bin/env bash
# Heimdall load benchmark: one script, one run.
#
# Measures, with wrk, the same small chat-completion POST against
#   (a) mock-upstream directly,
#   (b) nginx as a plain keep-alive reverse proxy in front of the mock,
#   (c) Heimdall in front of the mock, governance on: a virtual key whose chain (key → user →
#       team → customer) has a budget and a rate limit at every level,
#   (d) the same Heimdall called with an SSO JWT access token instead of the key: the token
#       names the key's user (external_id "idp:bob"), so the request goes through the same
#       governed chain user → team → customer; tokens come from the test OpenID Provider
#       in tests/oidc (node), which the script starts and stops,
# at several connection counts, then prints a table, Heimdall's ratios to
# nginx, the JWT rows' ratios to the virtual-key rows, Heimdall's peak RSS and its CPU time
# per request.
# See loadtest/README.md for how to read the numbers.
#
# Environment overrides (defaults in brackets):
#   DURATION [10]  seconds per wrk run      CONNS ["1 10 50"]  connection counts
#   ROUNDS [3]     rounds; each round runs mock, nginx, Heimdall (key) and Heimdall (JWT) back to
#                  back at every connection count, and the report shows each row's median over the rounds
#                  (interleaving keeps a slow phase of a shared VM from favouring one target)
#   WORKERS [2]    worker count of mock, nginx and Heimdall
#   AUDIT [true]   false runs Heimdall with audit persistence off, to measure what the trail costs
#   AUDIT_AB [true] also runs (e): a second Heimdall, identical but with audit persistence off,
#                  benchmarked right after (c) in every round, and prints (c)/(e): what the audit
#                  trail costs, measured in the same run (target at 50 connections: >= 0.95)
#   NOAUDIT_PORT [19003]  port of (e)
#   JWT [true]     false leaves out (d); without node or tests/oidc's packages (d) is skipped
#                  with a log line, never failing the run (npm ci --prefix tests/oidc is tried first)
#   MOCK_PORT [19000] NGINX_PORT [19001] HEIMDALL_PORT [19002]
#   VK [vk-loadtest-key]  virtual key sent by wrk
#   JWT_SUB [bob]  OP user the JWT is minted for (must map to a role: bob → developer)
#   OUT [target/loadtest]  where raw outputs go
#   SKIP_BUILD [0]  1 = use the existing target/release binaries
#   READY_TIMEOUT [30]  seconds to wait for each server
#   MOCK_ARGS [""]  extra mock-upstream flags, e.g. "--latency-ms 20"
#   MOCK_BIN / HEIMDALL_BIN [target/release/…]  binaries to run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-10}
AUDIT=${AUDIT:-true}
JWT=${JWT:-true}
JWT_SUB=${JWT_SUB:-bob}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-"1 10 50"}
WORKERS=${WORKERS:-2}
MOCK_PORT=${MOCK_PORT:-19000}
NGINX_PORT=${NGINX_PORT:-19001}
HEIMDALL_PORT=${HEIMDALL_PORT:-19002}
AUDIT_AB=${AUDIT_AB:-true}
NOAUDIT_PORT=${NOAUDIT_PORT:-19003}
VK=${VK:-vk-loadtest-key}
OUT=${OUT:-$ROOT/target/loadtest}
SKIP_BUILD=${SKIP_BUILD:-0}
READY_TIMEOUT=${READY_TIMEOUT:-30}

MOCK_ARGS=${MOCK_ARGS:-}
MOCK_BIN=${MOCK_BIN:-$ROOT/target/release/mock-upstream}
HEIMDALL_BIN=${HEIMDALL_BIN:-$ROOT/target/release/heimdall}
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'

log() { printf '[loadtest] %s\n' "$*" >&2; }
die() { printf '[loadtest] ERROR: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
ensure_tools() {
    local missing=()
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        if ! apt-get install -y "${missing[@]}" >"$OUT/apt.log" 2>&1; then
            log "apt-get install failed; running apt-get update and retrying"
            apt-get update >>"$OUT/apt.log" 2>&1 || true
            apt-get install -y "${missing[@]}" >>"$OUT/apt.log" 2>&1 ||
                die "could not install ${missing[*]} (see $OUT/apt.log)"
        fi
    fi
    NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
}

# --- processes we start, and cleanup -----------------------------------------
PIDS=()
TMP=""
cleanup() {
    local pid i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [ -n "$TMP" ] && rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# wait_ready NAME PID URL [curl args...]: until URL answers 2xx, the process dies, or timeout
wait_ready() {
    local name=$1 pid=$2 url=$3
    shift 3
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup"
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "$name not ready after ${READY_TIMEOUT}s ($url)"
    return 1
}

# check_chat NAME URL [CREDENTIAL]: one request like wrk's must answer 200 with the mock's reply
# (CREDENTIAL, sent as a bearer token, defaults to the virtual key)
check_chat() {
    local name=$1 url=$2 cred=${3:-$VK} out
    if ! out=$(curl -sS --max-time 5 -w '\n%{http_code}' -H 'Content-Type: application/json' \
        -H "Authorization: Bearer $cred" -d "$BODY" "$url/v1/chat/completions" 2>&1); then
        log "$name: request failed: $out"
        return 1
    fi
    if [ "${out##*$'\n'}" != 200 ] || [[ $out != *"mock reply to:"* ]]; then
        log "$name: unexpected answer to the benchmark request: $out"
        return 1
    fi
}

# --- wrk -----------------------------------------------------------------------
# write_wrk_script FILE CREDENTIAL: the wrk Lua script sending BODY with "Authorization: Bearer CREDENTIAL"
write_wrk_script() {
    local file=$1 cred=$2
    local esc_body=${BODY//\\/\\\\}
    esc_body=${esc_body//\"/\\\"}
    cat >"$file" <<EOF
-- generated by loadtest/run.sh
wrk.method = "POST"
wrk.body = "$esc_body"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $cred"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
EOF
}

# results: one line per run: target conns rps p50_ms p99_ms non2xx sockerr requests
RESULTS=()

# bench TARGET URL CONNS [LUA]: LUA defaults to chat.lua (the virtual key)
bench() {
    local target=$1 url=$2 c=$3 lua=${4:-$OUT/chat.lua} threads=2 raw
    ((c == 1)) && threads=1
    raw="$OUT/wrk-$target-c$c-r${ROUND:-1}.txt"
    log "wrk $target: ${c} connection(s), ${DURATION}s"
    if ! wrk -t"$threads" -c"$c" -d"${DURATION}s" --latency -s "$lua" \
        "$url/v1/chat/completions" >"$raw" 2>&1; then
        log "wrk failed for $target c=$c (see $raw)"
        RESULTS+=("$target $c - - - - - 0 wrk-failed")
        return
    fi
    local line
    line=$(grep '^RESULT ' "$raw" | tail -1 || true)
    if [ -z "$line" ]; then
        RESULTS+=("$target $c - - - - - 0 no-result")
        return
    fi
    RESULTS+=("$(awk -v target="$target" -v c="$c" '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        rps = v["requests"] / (v["duration_us"] / 1e6)
        sockerr = v["connect"] + v["read"] + v["write"] + v["timeout"]
        printf "%s %s %.1f %.3f %.3f %d %d %d ok", target, c, rps, v["p50_us"] / 1000, v["p99_us"] / 1000, v["non2xx"], sockerr, v["requests"]
    }' <<<"$line")")
}

# proc_cpu_ticks PID: utime+stime of the whole process (all threads)
proc_cpu_ticks() {
    # the comm field may contain spaces: cut after the last ')'
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

# tree_cpu_ticks PID: proc_cpu_ticks of PID plus its direct children (nginx's master and workers)
tree_cpu_ticks() {
    local sum child
    sum=$(proc_cpu_ticks "$1")
    for child in $(pgrep -P "$1"); do
        sum=$((sum + $(proc_cpu_ticks "$child")))
    done
    echo "$sum"
}

# --- (d): the test OpenID Provider and its JWT ---------------------------------------
# JWT_STATUS: ok | off (JWT=false) | "skipped: WHY" (no JWT rows, the run's exit status is not
# affected) | "failed: WHY" (Heimdall took the identity config but refused the token: JWT rows
# are reported as unavailable and the run fails)
OP_DIR=$ROOT/tests/oidc
OP_ISSUER=""
JWT_TOKEN=""
skip_jwt() {
    JWT_STATUS="skipped: $*"
    log "(d) JWT rows skipped: $*"
}

# start_op: starts tests/oidc/op.mjs on a free port, sets OP_ISSUER and JWT_TOKEN; skip_jwt on any failure
start_op() {
    if ! command -v node >/dev/null 2>&1; then
        skip_jwt "node is not installed (install Node.js 20+ to measure the JWT path)"
        return
    fi
    if [ ! -f "$OP_DIR/node_modules/oidc-provider/package.json" ]; then
        if ! command -v npm >/dev/null 2>&1; then
            skip_jwt "$OP_DIR/node_modules is missing and npm is not installed"
            return
        fi
        log "installing the test OpenID Provider's packages (npm ci --prefix tests/oidc)"
        if ! npm ci --prefix "$OP_DIR" >"$OUT/npm.log" 2>&1; then
            skip_jwt "npm ci --prefix tests/oidc failed (see $OUT/npm.log)"
            return
        fi
    fi
    log "starting the test OpenID Provider (tests/oidc/op.mjs)"
    OP_PORT=0 OP_PATH="" OP_AUDIENCE=api://gateway node "$OP_DIR/op.mjs" >"$OUT/op.log" 2>&1 &
    local pid=$! deadline=$((SECONDS + READY_TIMEOUT)) line="" answer
    PIDS+=("$pid")
    while ((SECONDS < deadline)); do
        line=$(grep -m1 '^OP_ISSUER=' "$OUT/op.log" || true)
        [ -n "$line" ] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            skip_jwt "the OpenID Provider exited during startup (see $OUT/op.log)"
            return
        fi
        sleep 0.1
    done
    if [ -z "$line" ]; then
        skip_jwt "the OpenID Provider printed no OP_ISSUER line in ${READY_TIMEOUT}s (see $OUT/op.log)"
        return
    fi
    OP_ISSUER=${line#OP_ISSUER=}
    log "OpenID Provider at $OP_ISSUER; minting an access token for '$JWT_SUB'"
    if ! answer=$(curl -sS --max-time 5 -X POST -H 'content-type: application/json' \
        -d "{\"sub\":\"$JWT_SUB\",\"exp_in\":86400}" "$OP_ISSUER/__test/token" 2>&1); then
        skip_jwt "could not mint a token: $answer"
        return
    fi
    JWT_TOKEN=$(sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p' <<<"$answer")
    if ! [[ $JWT_TOKEN =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]]; then
        skip_jwt "the OpenID Provider's token answer is not a JWT: $answer"
        return
    fi
    log "token minted (${#JWT_TOKEN} characters)"
}

# --- main ----------------------------------------------------------------------
mkdir -p "$OUT"
rm -f "$OUT"/wrk-*.txt "$OUT"/summary.txt "$OUT"/results.tsv "$OUT"/all-rounds.tsv \
    "$OUT"/chat-jwt.lua "$OUT"/op.log "$OUT"/heimdall-check.log "$OUT"/heimdall-refused.toml
case $JWT in
true) JWT_STATUS=ok ;;
false) JWT_STATUS=off ;;
*) die "JWT must be true or false, not '$JWT'" ;;
esac
ensure_tools
ulimit -n 65536 2>/dev/null || true

HEIMDALL_STATUS=ok
if [ "$SKIP_BUILD" != 1 ]; then
    log "building release binaries (cargo build --release --bins)"
    if ! cargo build --release --bins >"$OUT/build.log" 2>&1; then
        log "cargo build --release --bins failed (see $OUT/build.log); building mock-upstream alone"
        HEIMDALL_STATUS="build failed (see $OUT/build.log)"
        cargo build --release --bin mock-upstream >>"$OUT/build.log" 2>&1 ||
            die "cannot build mock-upstream (see $OUT/build.log)"
    fi
fi
[ -x "$MOCK_BIN" ] || die "missing $MOCK_BIN"
if [ "$HEIMDALL_STATUS" = ok ] && [ ! -x "$HEIMDALL_BIN" ]; then
    HEIMDALL_STATUS="binary $HEIMDALL_BIN missing"
fi

for p in "$MOCK_PORT" "$NGINX_PORT" "$HEIMDALL_PORT"; do
    port_in_use "$p" && die "port $p is already in use (set MOCK_PORT/NGINX_PORT/HEIMDALL_PORT)"
done

TMP=$(mktemp -d /tmp/heimdall-loadtest.XXXXXX)
chmod 755 "$TMP"
write_wrk_script "$OUT/chat.lua" "$VK"

# (a) mock upstream
log "starting mock-upstream on 127.0.0.1:$MOCK_PORT ($WORKERS workers) $MOCK_ARGS"
# shellcheck disable=SC2086 # MOCK_ARGS is a list of flags
"$MOCK_BIN" --listen "127.0.0.1:$MOCK_PORT" --workers "$WORKERS" $MOCK_ARGS >"$OUT/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_ready mock-upstream "$MOCK_PID" "http://127.0.0.1:$MOCK_PORT/v1/models" ||
    die "mock-upstream did not start (see $OUT/mock.log)"
check_chat mock-upstream "http://127.0.0.1:$MOCK_PORT" || die "mock-upstream answers wrongly"

# (b) nginx
mkdir -p "$TMP/nginx/logs"
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"
cat >"$TMP/nginx/nginx.conf" <<EOF
# generated by loadtest/run.sh
$NGINX_USER
worker_processes $WORKERS;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
worker_rlimit_nofile 65536;
events {
    worker_connections 8192;
}
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
    upstream mock {
        server 127.0.0.1:$MOCK_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
cp "$TMP/nginx/nginx.conf" "$OUT/nginx.conf"
"$NGINX" -t -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >"$OUT/nginx.log" 2>&1 ||
    die "nginx rejects the generated config (see $OUT/nginx.log)"
log "starting nginx on 127.0.0.1:$NGINX_PORT ($WORKERS workers)"
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >>"$OUT/nginx.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_ready nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/v1/models" ||
    die "nginx did not start (see $OUT/nginx.log and $TMP/nginx/logs/error.log)"
check_chat nginx "http://127.0.0.1:$NGINX_PORT" || die "nginx answers wrongly"

# (d) needs the OpenID Provider before Heimdall's config is written: the config names its issuer
if [ "$JWT_STATUS" = ok ]; then
    if [ "$HEIMDALL_STATUS" = ok ]; then
        start_op
    else
        skip_jwt "Heimdall is unavailable ($HEIMDALL_STATUS)"
    fi
fi

# write_heimdall_config WITH_IDENTITY [FILE PORT AUDIT]: Heimdall's config (default: $TMP/heimdall.toml,
# HEIMDALL_PORT, AUDIT); with true, also the OpenID Provider and the load user's external_id, so
# that a JWT for JWT_SUB is governed as that user
write_heimdall_config() {
    local external="" file=${2:-$TMP/heimdall.toml} port=${3:-$HEIMDALL_PORT} audit=${4:-$AUDIT}
    [ "$1" = true ] && external=$'\n'"external_id = \"idp:$JWT_SUB\""
    cat >"$file" <<EOF
# generated by loadtest/run.sh
[server]
listen = "127.0.0.1:$port"
workers = $WORKERS
require_virtual_key = true

[storage]
path = "${file%.toml}.db"

[audit]
enabled = $audit

[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
models = ["gpt-4o-mini", "gpt-4o"]
keys = [{ value = "sk-mock", weight = 1.0 }]

[pricing."gpt-4o-mini"]
input_per_mtok = 0.15
output_per_mtok = 0.60
max_output_tokens = 16384

# Governance on: a budget and a rate limit at every level of the key's chain, generous enough
# never to refuse during the run, so every request is admitted, reserved and settled 4 times.
[[governance.customers]]
id = "load-customer"
budgets = [{ max_usd = 1000000.0, reset = "1M", calendar_aligned = true }]
rate_limits = [{ requests = 1000000000, per = "1h" }]

[[governance.teams]]
id = "load-team"
customer = "load-customer"
budgets = [{ max_usd = 1000000.0, reset = "1d" }]
rate_limits = [{ requests = 1000000000, tokens = 100000000000, per = "1m" }]

[[governance.users]]
id = "load-user"$external
teams = ["load-team"]
budgets = [{ max_usd = 1000000.0, reset = "1w", calendar_aligned = true }]
rate_limits = [{ requests = 1000000000, per = "1d" }]

[[governance.virtual_keys]]
id = "vk-load"
value = "$VK"
user = "load-user"
allowed_models = ["*"]
allowed_providers = ["*"]
active = true
budgets = [{ max_usd = 1000000.0, reset = "1h" }]
rate_limits = [{ requests = 1000000000, per = "1m" }]
EOF
    [ "$1" = true ] || return 0
    cat >>"$file" <<EOF

# (d) SSO: JWT access tokens of the test OpenID Provider, governed as the user they name
# (load-user's external_id above), through the same chain user → team → customer as the key.
[[identity.providers]]
name = "idp"
kind = "oidc"
issuer = "$OP_ISSUER"
client_id = "gateway"
audience = "api://gateway"
role_map = { "gw-developers" = "developer" }
default_role = "deny"
EOF
}

# (c) Heimdall, and (d) the same process with the JWT
HEIMDALL_PID=""
if [ "$HEIMDALL_STATUS" = ok ]; then
    write_heimdall_config "$([ "$JWT_STATUS" = ok ] && echo true || echo false)"
    # an older binary may not know the identity config: then run (c) without it and skip (d)
    if [ "$JWT_STATUS" = ok ] &&
        ! "$HEIMDALL_BIN" check --config "$TMP/heimdall.toml" >"$OUT/heimdall-check.log" 2>&1; then
        cp "$TMP/heimdall.toml" "$OUT/heimdall-refused.toml"
        why=$(grep -v '^[[:space:]]*$' "$OUT/heimdall-check.log" | tail -1 | sed 's/^.*ERROR[^:]*: //')
        why=${why//"$TMP/heimdall.toml"/$OUT/heimdall-refused.toml}
        skip_jwt "$HEIMDALL_BIN refuses the config with the identity provider: $why (rebuild it)"
        write_heimdall_config false
    fi
    cp "$TMP/heimdall.toml" "$OUT/heimdall.toml"
    log "starting heimdall on 127.0.0.1:$HEIMDALL_PORT ($WORKERS workers)"
    "$HEIMDALL_BIN" serve --config "$TMP/heimdall.toml" >"$OUT/heimdall.log" 2>&1 &
    HEIMDALL_PID=$!
    PIDS+=("$HEIMDALL_PID")
    if ! wait_ready heimdall "$HEIMDALL_PID" "http://127.0.0.1:$HEIMDALL_PORT/health"; then
        HEIMDALL_STATUS="did not become ready (see $OUT/heimdall.log)"
    elif ! check_chat heimdall "http://127.0.0.1:$HEIMDALL_PORT"; then
        HEIMDALL_STATUS="wrong answer to the benchmark request (see above and $OUT/heimdall.log)"
    fi
fi
if [ "$JWT_STATUS" = ok ] && [ "$HEIMDALL_STATUS" = ok ]; then
    # Heimdall fetches the JWKS at start: until then the token is refused (401)
    log "waiting for heimdall to accept the JWT (JWKS fetched from $OP_ISSUER)"
    if ! wait_ready heimdall-jwt "$HEIMDALL_PID" "http://127.0.0.1:$HEIMDALL_PORT/v1/chat/completions" \
        -H 'Content-Type: application/json' -H "Authorization: Bearer $JWT_TOKEN" -d "$BODY"; then
        last=$(curl -sS --max-time 5 -w ' (HTTP %{http_code})' -H 'Content-Type: application/json' \
            -H "Authorization: Bearer $JWT_TOKEN" -d "$BODY" "http://127.0.0.1:$HEIMDALL_PORT/v1/chat/completions" 2>&1 || true)
        JWT_STATUS="failed: heimdall did not accept the JWT within ${READY_TIMEOUT}s; last answer: $last"
        log "(d) $JWT_STATUS"
    elif ! check_chat heimdall-jwt "http://127.0.0.1:$HEIMDALL_PORT" "$JWT_TOKEN"; then
        JWT_STATUS="failed: wrong answer to the benchmark request with the JWT (see above and $OUT/heimdall.log)"
    else
        write_wrk_script "$OUT/chat-jwt.lua" "$JWT_TOKEN"
    fi
fi

# (e) the same Heimdall with audit persistence off, to measure the trail's cost in this run
NOAUDIT_PID=""
NOAUDIT_STATUS=off
if [ "$AUDIT_AB" = true ] && [ "$HEIMDALL_STATUS" = ok ]; then
    NOAUDIT_STATUS=ok
    if port_in_use "$NOAUDIT_PORT"; then
        NOAUDIT_STATUS="port $NOAUDIT_PORT is in use (set NOAUDIT_PORT)"
    else
        write_heimdall_config false "$TMP/heimdall-noaudit.toml" "$NOAUDIT_PORT" false
        cp "$TMP/heimdall-noaudit.toml" "$OUT/heimdall-noaudit.toml"
        log "starting heimdall-noaudit on 127.0.0.1:$NOAUDIT_PORT (audit persistence off)"
        "$HEIMDALL_BIN" serve --config "$TMP/heimdall-noaudit.toml" >"$OUT/heimdall-noaudit.log" 2>&1 &
        NOAUDIT_PID=$!
        PIDS+=("$NOAUDIT_PID")
        if ! wait_ready heimdall-noaudit "$NOAUDIT_PID" "http://127.0.0.1:$NOAUDIT_PORT/health"; then
            NOAUDIT_STATUS="did not become ready (see $OUT/heimdall-noaudit.log)"
        elif ! check_chat heimdall-noaudit "http://127.0.0.1:$NOAUDIT_PORT"; then
            NOAUDIT_STATUS="wrong answer to the benchmark request (see $OUT/heimdall-noaudit.log)"
        fi
    fi
    [ "$NOAUDIT_STATUS" = ok ] || log "(e) heimdall-noaudit unavailable: $NOAUDIT_STATUS"
fi

# run_heimdall C / run_noaudit C: one run of (c) / (e) at C connections, with their CPU ticks
run_heimdall() {
    local c=$1
    if [ "$HEIMDALL_STATUS" = ok ]; then
        before=$(proc_cpu_ticks "$HEIMDALL_PID")
        bench heimdall "http://127.0.0.1:$HEIMDALL_PORT" "$c"
        if kill -0 "$HEIMDALL_PID" 2>/dev/null; then
            HEIMDALL_TICKS=$((HEIMDALL_TICKS + $(proc_cpu_ticks "$HEIMDALL_PID") - before))
        else
            HEIMDALL_STATUS="exited during the runs (see $OUT/heimdall.log)"
        fi
    else
        RESULTS+=("heimdall $c - - - - - 0 unavailable")
    fi
}
run_noaudit() {
    local c=$1
    if [ "$NOAUDIT_STATUS" = ok ]; then
        before=$(proc_cpu_ticks "$NOAUDIT_PID")
        bench heimdall-noaudit "http://127.0.0.1:$NOAUDIT_PORT" "$c"
        if kill -0 "$NOAUDIT_PID" 2>/dev/null; then
            NOAUDIT_TICKS=$((NOAUDIT_TICKS + $(proc_cpu_ticks "$NOAUDIT_PID") - before))
        else
            NOAUDIT_STATUS="exited during the runs (see $OUT/heimdall-noaudit.log)"
        fi
    elif [ "$AUDIT_AB" = true ]; then
        RESULTS+=("heimdall-noaudit $c - - - - - 0 unavailable")
    fi
}

# --- runs ----------------------------------------------------------------------
NGINX_TICKS=0
NOAUDIT_TICKS=0
HEIMDALL_TICKS=0
JWT_TICKS=0
HEIMDALL_HWM=""
for ROUND in $(seq 1 "$ROUNDS"); do
    log "round $ROUND of $ROUNDS"
    for c in $CONNS; do
        bench mock "http://127.0.0.1:$MOCK_PORT" "$c"
        before=$(tree_cpu_ticks "$NGINX_PID")
        bench nginx "http://127.0.0.1:$NGINX_PORT" "$c"
        NGINX_TICKS=$((NGINX_TICKS + $(tree_cpu_ticks "$NGINX_PID") - before))
        # (c) and (e) swap places every round, so neither gains from going first
        if ((ROUND % 2)); then
            run_heimdall "$c"
            run_noaudit "$c"
        else
            run_noaudit "$c"
            run_heimdall "$c"
        fi
        if [ "$JWT_STATUS" = ok ] && [ "$HEIMDALL_STATUS" = ok ]; then
            before=$(proc_cpu_ticks "$HEIMDALL_PID")
            bench heimdall-jwt "http://127.0.0.1:$HEIMDALL_PORT" "$c" "$OUT/chat-jwt.lua"
            if kill -0 "$HEIMDALL_PID" 2>/dev/null; then
                JWT_TICKS=$((JWT_TICKS + $(proc_cpu_ticks "$HEIMDALL_PID") - before))
            else
                HEIMDALL_STATUS="exited during the runs (see $OUT/heimdall.log)"
            fi
        elif [ "$JWT_STATUS" = ok ] || [[ $JWT_STATUS == failed* ]]; then
            RESULTS+=("heimdall-jwt $c - - - - - 0 unavailable")
        fi
    done
done
if [ "$HEIMDALL_STATUS" = ok ]; then
    HEIMDALL_HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$HEIMDALL_PID/status")
    # A peak RSS well above the usual is most often a backlog: records that found a core's ring
    # full (the writer fell behind) wait in the overflow queue and in one large batch.
    HEIMDALL_SPILLED=$(curl -s --max-time 2 "http://127.0.0.1:$HEIMDALL_PORT/metrics" |
        awk '$1 == "heimdall_audit_spilled_total" { print $2 }' || true)
fi

# ratio_table A B LABEL_A LABEL_B RATIO_NAME TARGET AT: per connection count, A's req/s and p50
# next to B's and A/B; flags a ratio below TARGET at every count (AT=all) or only at AT connections
ratio_table() {
    awk -v a="$1" -v b="$2" -v la="$3" -v lb="$4" -v rn="$5" -v target="$6" -v at="$7" '
    { key = $1 " " $2; rps[key] = $3; p50[key] = $4; ok[key] = ($9 == "ok"); if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
    END {
        printf "%6s %12s %12s %12s %12s %12s  %s\n", "conns", "req/s " la, "req/s " lb, "ratio " rn, "p50 " la " ms", "p50 " lb " ms", ""
        for (i = 1; i <= n; i++) {
            c = order[i]; x = a " " c; y = b " " c
            if (!(x in ok) || !(y in ok)) continue
            if (!ok[x] || !ok[y]) { printf "%6s %12s\n", c, "n/a (a run is missing)"; continue }
            r = (rps[y] > 0) ? rps[x] / rps[y] : -1
            flag = ((at == "all" || c == at) && r >= 0 && r < target) ? "!!! BELOW " target : ""
            printf "%6s %12.1f %12.1f %12s %12.3f %12.3f  %s\n", c, rps[x], rps[y], (r >= 0) ? sprintf("%.3f", r) : "n/a", p50[x], p50[y], flag
        }
    }' "$OUT/results.tsv"
}

# --- report ----------------------------------------------------------------------
printf '%s\n' "${RESULTS[@]}" >"$OUT/all-rounds.tsv"
# One row per target and connection count: medians of req/s, p50 and p99; sums of errors and requests.
awk '
function median(list,    a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
    k = $1 " " $2
    if (!(k in seen)) { seen[k] = 1; order[++n] = k; status[k] = "ok" }
    if ($9 != "ok") { status[k] = $9; next }
    rps[k] = rps[k] " " $3; p50[k] = p50[k] " " $4; p99[k] = p99[k] " " $5
    non2xx[k] += $6; sockerr[k] += $7; reqs[k] += $8
}
END {
    for (i = 1; i <= n; i++) {
        k = order[i]
        if (status[k] != "ok") { print k, "-", "-", "-", "-", "-", 0, status[k]; continue }
        printf "%s %.1f %.3f %.3f %d %d %d ok\n", k, median(rps[k]), median(p50[k]), median(p99[k]), non2xx[k], sockerr[k], reqs[k]
    }
}' "$OUT/all-rounds.tsv" >"$OUT/results.tsv"
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

{
    echo
    echo "Heimdall load test: ${DURATION}s per run, median of ${ROUNDS} interleaved rounds, wrk -t1 (1 conn) / -t2, ${WORKERS} workers each, $(nproc) cores"
    echo "body: $BODY"
    echo
    awk '
    BEGIN { printf "%-17s %6s %11s %9s %9s %8s %8s  %s\n", "target", "conns", "req/s", "p50 ms", "p99 ms", "non-2xx", "sockerr", "" }
    {
        flag = ""
        if ($9 != "ok") flag = "!!! " toupper($9)
        else if ($6 > 0 || $7 > 0) flag = "!!! ERRORS"
        printf "%-17s %6s %11s %9s %9s %8s %8s  %s\n", $1, $2, $3, $4, $5, $6, $7, flag
    }' "$OUT/results.tsv"
    echo
    echo "Heimdall vs nginx (added p50 = target p50 - mock-direct p50):"
    awk '
    { key = $1 " " $2; rps[key] = $3; p50[key] = $4; ok[key] = ($9 == "ok") ; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
    END {
        printf "%6s %16s %19s %17s %16s %15s\n", "conns", "req/s ratio h/n", "added p50 heimdall", "added p50 nginx", "added p50 ratio", "p50 ratio h/n"
        for (i = 1; i <= n; i++) {
            c = order[i]; h = "heimdall " c; g = "nginx " c; m = "mock " c
            if (!ok[h] || !ok[g] || !ok[m]) { printf "%6s %16s\n", c, "n/a (a run is missing)"; continue }
            ah = p50[h] - p50[m]; an = p50[g] - p50[m]
            rr = (rps[g] > 0) ? sprintf("%.2f", rps[h] / rps[g]) : "n/a"
            ar = (an > 0) ? sprintf("%.2f", ah / an) : "n/a"
            pr = (p50[g] > 0) ? sprintf("%.2f", p50[h] / p50[g]) : "n/a"
            printf "%6s %16s %16.3f ms %14.3f ms %16s %15s\n", c, rr, ah, an, ar, pr
        }
    }' "$OUT/results.tsv"
    echo
    if grep -q '^heimdall-jwt ' "$OUT/results.tsv"; then
        echo "Heimdall with a JWT vs with the virtual key (target: req/s ratio j/k >= 0.90):"
        ratio_table heimdall-jwt heimdall jwt key j/k 0.90 all
        echo
    fi
    if grep -q '^heimdall-noaudit ' "$OUT/results.tsv"; then
        echo "Heimdall with the audit trail (audit enabled = $AUDIT) vs without (target at 50 connections: ratio on/off >= 0.95):"
        ratio_table heimdall heimdall-noaudit on off on/off 0.95 50
        total=$(awk '$1 == "heimdall-noaudit" { s += $8 } END { print s + 0 }' "$OUT/results.tsv")
        awk -v t="$NOAUDIT_TICKS" -v n="$total" -v hz="$CLK_TCK" 'BEGIN {
            if (n > 0) printf "Heimdall CPU per request, audit off: %.1f us (%d ticks at %d Hz over %d requests)\n", t * 1e6 / hz / n, t, hz, n
        }'
        echo
    fi
    case $JWT_STATUS in
    skipped* | failed*) printf '!!! JWT ROWS %s: %s\n\n' "$(tr '[:lower:]' '[:upper:]' <<<"${JWT_STATUS%%:*}")" "${JWT_STATUS#*: }" ;;
    esac
    if [ "$HEIMDALL_STATUS" = ok ] && [ -n "$HEIMDALL_HWM" ]; then
        total=$(awk '$1 == "heimdall" { s += $8 } END { print s + 0 }' "$OUT/results.tsv")
        awk -v t="$HEIMDALL_TICKS" -v n="$total" -v hz="$CLK_TCK" -v hwm="$HEIMDALL_HWM" -v spilled="${HEIMDALL_SPILLED:-unknown}" 'BEGIN {
            printf "Heimdall peak RSS (VmHWM): %.1f MiB (audit records spilled past a full ring: %s)\n", hwm / 1024, spilled
            if (n > 0) printf "Heimdall CPU per request: %.1f us (%d ticks at %d Hz over %d requests)\n", t * 1e6 / hz / n, t, hz, n
        }'
        total=$(awk '$1 == "heimdall-jwt" { s += $8 } END { print s + 0 }' "$OUT/results.tsv")
        awk -v t="$JWT_TICKS" -v n="$total" -v hz="$CLK_TCK" 'BEGIN {
            if (n > 0) printf "Heimdall CPU per request, JWT: %.1f us (%d ticks at %d Hz over %d requests)\n", t * 1e6 / hz / n, t, hz, n
        }'
    else
        echo "!!! HEIMDALL ROW FAILED: $HEIMDALL_STATUS"
    fi
    if [ "$NGINX_TICKS" -gt 0 ]; then
        total=$(awk '$1 == "nginx" { s += $8 } END { print s + 0 }' "$OUT/results.tsv")
        awk -v t="$NGINX_TICKS" -v n="$total" -v hz="$CLK_TCK" 'BEGIN {
            if (n > 0) printf "nginx CPU per request:    %.1f us (%d ticks at %d Hz over %d requests)\n", t * 1e6 / hz / n, t, hz, n
        }'
    fi
    if grep -qv ' ok$' "$OUT/results.tsv" || awk '$9 == "ok" && ($6 > 0 || $7 > 0) { bad = 1 } END { exit !bad }' "$OUT/results.tsv"; then
        echo "!!! SOME RUNS HAD ERRORS OR DID NOT RUN: the numbers above are not a valid comparison."
    fi
    echo
    echo "raw wrk outputs, configs and logs: $OUT"
} | tee "$OUT/summary.txt"

if [ "$HEIMDALL_STATUS" != ok ] || grep -qv ' ok$' "$OUT/results.tsv" ||
    awk '$9 == "ok" && ($6 > 0 || $7 > 0) { bad = 1 } END { exit !bad }' "$OUT/results.tsv"; then
    exit 1
fi
