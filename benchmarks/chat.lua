-- wrk script (a copy of the shared harness's load/chat.lua): POST an OpenAI-style chat body,
-- write a JSON summary to $BENCH_OUT. env: BENCH_PATH, BENCH_MODEL, BENCH_STREAM (1 => "stream":
-- true), BENCH_AUTH (bearer token, optional), BENCH_OUT (file for the JSON summary).
local path   = os.getenv("BENCH_PATH") or "/v1/chat/completions"
local model  = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
local stream = os.getenv("BENCH_STREAM") == "1"
local auth   = os.getenv("BENCH_AUTH")

wrk.method = "POST"
wrk.path = path
wrk.headers["Content-Type"] = "application/json"
if auth and auth ~= "" then wrk.headers["Authorization"] = "Bearer " .. auth end
wrk.body = string.format('{"model":"%s","messages":[{"role":"system","content":"You are a terse assistant used in a benchmark."},{"role":"user","content":"Say one short sentence about proxy latency."}],"max_tokens":64,"temperature":0,"stream":%s}',
  model, stream and "true" or "false")

function done(summary, latency, requests)
  local e = summary.errors
  local s = string.format('{"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_max_us":%d,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99))
  local out = os.getenv("BENCH_OUT")
  if out and out ~= "" then local f = io.open(out, "w"); f:write(s); f:close() else io.write(s) end
end
