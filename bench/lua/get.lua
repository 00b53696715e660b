-- wrk script for GET runs: prints wrk's summary as one JSON line that
-- bench/run.py parses (the same figures wrk prints, without rounding).
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests": %.0f, "bytes": %.0f, "duration_us": %.0f, ' ..
      '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}, ' ..
      '"latency_p50_us": %.0f, "latency_p99_us": %.0f}\n',
      summary.requests, summary.bytes, summary.duration,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
