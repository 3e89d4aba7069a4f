-- wrk script for bench/wrk.py: POST one JSON body per line of a file, round robin, with
-- an optional extra header.   wrk ... -s bench/wrk_post.lua URL -- BODIES [HEADER VALUE]
local bodies = {}
local headers = {["Content-Type"] = "application/json"}
local i = 0

init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  if args[2] then headers[args[2]] = args[3] end
end

request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
