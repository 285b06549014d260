#!/bin/sh
# The Go seed beside regcenter, same machine, same loaders, one round:
# wrk POST renewals and GETs at 100 servers against both, `regcenter bench`
# UDP renewals against regcenter, seed-header GETs at 10 000 servers
# against both (wrk cannot read a header that long). Needs go and wrk;
# run from the repository after `cargo build --release`. 127.0.0.1 only.
set -eu
REG=target/release/regcenter
GO_PORT=${GO_PORT:-19998}
RC_PORT=${RC_PORT:-19999}
D=${D:-10s}
go build -o target/seed-registry benches/seed/main.go
target/seed-registry 127.0.0.1:$GO_PORT 2>/dev/null &
GO_PID=$!
$REG serve --addr 127.0.0.1:$RC_PORT 2>/dev/null &
RC_PID=$!
trap 'kill $GO_PID $RC_PID' EXIT
sleep 1
GO=http://127.0.0.1:$GO_PORT/myRPC/registry
RC=http://127.0.0.1:$RC_PORT/myRPC/registry
rate() { awk '/Requests\/sec/ {print $2}'; }
for url in $GO $RC; do
    i=0
    while [ $i -lt 100 ]; do
        curl -s -o /dev/null -X POST -H "X-Myrpc-Server: tcp@10.0.0.$i:7001" -H "X-Myrpc-Ttl: 1h" $url
        i=$((i + 1))
    done
done
uptime
echo "POST wrk    go $(wrk -t2 -c64 -d$D -s benches/seed/post.lua $GO | rate)  regcenter $(wrk -t2 -c64 -d$D -s benches/seed/post.lua $RC | rate)"
for c in 64 256; do
    echo "POST udp    regcenter, $c in flight $($REG bench --registry $RC --service '' --op renew-udp --servers 100 --clients $c --duration $D 2>/dev/null | awk '/^rate/ {print $2}')"
done
echo "POST bench  go $($REG bench --registry $GO --service '' --op renew --servers 100 --clients 64 --duration $D 2>/dev/null | awk '/^rate/ {print $2}')  regcenter $($REG bench --registry $RC --service '' --op renew --servers 100 --clients 64 --duration $D 2>/dev/null | awk '/^rate/ {print $2}')"
echo "GET100 wrk  go $(wrk -t2 -c64 -d$D $GO | rate)  regcenter $(wrk -t2 -c64 -d$D $RC | rate)"
echo "GET10k      go $($REG bench --registry $GO --service '' --op get --format seed --servers 10000 --clients 64 --duration $D 2>/dev/null | awk '/^rate/ {print $2}')  regcenter $($REG bench --registry $RC --service '' --op get --format seed --servers 10000 --clients 64 --duration $D 2>/dev/null | awk '/^rate/ {print $2}')"
uptime
