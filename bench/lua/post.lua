-- wrk script for POST runs.
--
--   wrk -tN ... -s post.lua URL -- new BODY_PREFIX_FILE NAMES_FILE AUTH N
--   wrk -tN ... -s post.lua URL -- existing BODY_FILE SHA AUTH N
--
-- "new": every request uploads a blob never seen before.  Bodies are
-- BODY_PREFIX .. suffix, where NAMES_FILE holds one "sha suffix" line per
-- blob (bench/run.py computes the sha-256s; the prefix is shared, so the
-- client only concatenates).  Thread k of N takes lines k, k+N, k+2N, ...;
-- running out wraps around (repeats are then counted in "wrapped").
-- "existing": the same already-stored blob over and over (the server answers
-- 200: a body this small, sent without Expect: 100-continue, is read so
-- that the connection stays usable, and is not written).
--
-- Responses are counted by status; done() prints one JSON line.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local function slurp(path)
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

function init(args)
   mode = args[1]
   nthreads = tonumber(args[5])
   c201, c200, cother, wrapped = 0, 0, 0, 0
   headers = { ["Authorization"] = args[4], ["Content-Type"] = "application/octet-stream" }
   if mode == "new" then
      prefix = slurp(args[2])
      shas, suffixes = {}, {}
      local i = 0
      for line in io.lines(args[3]) do
         if i % nthreads == id then
            local sha, suffix = line:match("^(%x+) (%S+)$")
            table.insert(shas, sha)
            table.insert(suffixes, suffix)
         end
         i = i + 1
      end
      idx = 0
   else
      fixed = wrk.format("POST", "/" .. args[3], headers, slurp(args[2]))
   end
end

function request()
   if mode ~= "new" then
      return fixed
   end
   idx = idx + 1
   if idx > #shas then
      idx = 1
      wrapped = wrapped + 1
   end
   return wrk.format("POST", "/" .. shas[idx], headers, prefix .. suffixes[idx])
end

function response(status, headers, body)
   if status == 201 then
      c201 = c201 + 1
   elseif status == 200 then
      c200 = c200 + 1
   else
      cother = cother + 1
      if cother <= 3 then
         io.stderr:write(string.format("status %d: %s\n", status, tostring(body):sub(1, 200)))
      end
   end
end

function done(summary, latency, requests)
   local t201, t200, tother, twrapped = 0, 0, 0, 0
   for _, t in ipairs(threads) do
      t201 = t201 + t:get("c201")
      t200 = t200 + t:get("c200")
      tother = tother + t:get("cother")
      twrapped = twrapped + t:get("wrapped")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests": %.0f, "bytes": %.0f, "duration_us": %.0f, ' ..
      '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}, ' ..
      '"latency_p50_us": %.0f, "latency_p99_us": %.0f, ' ..
      '"status": {"201": %.0f, "200": %.0f, "other": %.0f}, "wrapped": %.0f}\n',
      summary.requests, summary.bytes, summary.duration,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99),
      t201, t200, tother, twrapped))
end
