#!/usr/bin/env bash
# nginx in front of slm, on one machine (a check you run and report, not a CI step; the
# several-host fault test with network namespaces is still to come):
#   - config/nginx/slm.conf passes `nginx -t`;
#   - with its upstreams pointed at one live `slm serve` and two dead ports, every request
#     succeeds (nginx retries past the dead hosts) and SSE streams come through;
#   - SIGTERM to slm during a stream lets the stream finish ([DONE]).
# Needs nginx (`apt-get install -y nginx-light`) and a release build of slm with the default
# model installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v nginx >/dev/null || { echo "nginx is not installed: apt-get install -y nginx-light" >&2; exit 2; }
work=$(mktemp -d)
slm_port=18180 ngx_port=18190
cleanup() {
  nginx -c "$work/nginx.conf" -s stop 2>/dev/null || true
  [ -n "${slm_pid:-}" ] && kill "$slm_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
sed -e "s/10.0.0.11:8080/127.0.0.1:$((slm_port + 1))/; s/10.0.0.12:8080/127.0.0.1:$slm_port/" \
    -e "s/10.0.0.13:8080/127.0.0.1:$((slm_port + 2))/; s/listen 8080;/listen $ngx_port;/" \
    config/nginx/slm.conf > "$work/slm.conf"
cat > "$work/nginx.conf" <<CONF
events {}
pid $work/nginx.pid;
error_log $work/error.log;
http { access_log off; include $work/slm.conf; }
CONF
nginx -t -c "$work/nginx.conf"
nginx -c "$work/nginx.conf"
target/release/slm serve --port "$slm_port" > "$work/slm.log" 2>&1 &
slm_pid=$!
for _ in $(seq 1 300); do curl -sf "localhost:$slm_port/health/ready" >/dev/null && break; sleep 0.2; done
url="localhost:$ngx_port/v1/chat/completions"
model=$(curl -s "localhost:$ngx_port/v1/models" | python3 -c \
  "import json,sys; print([m['id'] for m in json.load(sys.stdin)['data'] if m.get('status') == 'loaded'][0])")
body() { printf '{"model":"%s","messages":[{"role":"user","content":"%s"}],"max_tokens":%d,"stream":%s}' "$model" "$1" "$2" "$3"; }
ok=0
for _ in $(seq 1 6); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$url" -H 'content-type: application/json' -d "$(body hi 4 false)")
  [ "$code" = 200 ] && ok=$((ok + 1))
done
echo "through nginx with 2 of 3 upstreams dead: $ok/6 requests answered 200"
curl -sN "$url" -H 'content-type: application/json' -d "$(body 'Write a long story' 80 true)" > "$work/stream.txt" &
curl_pid=$!
sleep 1.5
kill -TERM "$slm_pid"
wait "$curl_pid" || true
chunks=$(grep -c '^data: {' "$work/stream.txt" || true)
done_=$(grep -c '^data: \[DONE\]' "$work/stream.txt" || true)
echo "stream in flight at SIGTERM: $chunks chunks, [DONE] seen: $done_"
[ "$ok" = 6 ] && [ "$done_" = 1 ]
