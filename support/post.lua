-- wrk script: POST the JSON bodies of a file (one per line) in order, cycling; print a JSON
-- summary line at the end. Usage: wrk ... -s support/post.lua URL -- BODIES_FILE
-- Read a line a request, not the whole file at start: a file of thousands of 100-row bodies
-- (hundreds of MB) would otherwise cost wrk seconds of CPU inside the measured window.
local file

init = function(args)
  file = assert(io.open(args[1], "r"))
end

request = function()
  local body = file:read("*l")
  if body == nil then
    file:seek("set", 0)
    body = file:read("*l")
  end
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end

done = function(summary, latency, requests)
  local errors = summary.errors
  local points = {}
  for _, p in ipairs({ 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9 }) do
    points[#points + 1] = string.format('"%s": %d', p, latency:percentile(p))
  end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, '
      .. '"mean_us": %.1f, "percentiles_us": {%s}}\n',
    summary.requests, summary.duration,
    errors.connect + errors.read + errors.write + errors.timeout, errors.status,
    latency.mean, table.concat(points, ", ")))
end
