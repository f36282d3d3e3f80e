-- wrk script: POST the JSON bodies of a file (one per line) in order, cycling; print a JSON
-- summary line at the end. Usage: wrk ... -s benchmarks/post.lua URL -- BODIES_FILE
local bodies = {}
local position = 0

init = function(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
end

request = function()
  position = position % #bodies + 1
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, bodies[position])
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
