-- wrk -t2 -c64 -d10s -s benches/seed/post.lua http://127.0.0.1:PORT/myRPC/registry
-- A renewal of one server, as the seed's Heartbeat sends it.
wrk.method = "POST"
wrk.headers["X-Myrpc-Server"] = "tcp@10.0.0.1:7001"
wrk.headers["X-Myrpc-Ttl"] = "1h"
