-- Request tagging: tags the request (metadata, kept on the usage record) with its team, a size
-- class, and whether it streams.
function pre_route(req)
  local n = 0
  if req.body and req.body.messages then n = #req.body.messages end
  req.metadata.team = req.team_id or "none"
  req.metadata.size = (n > 10) and "long" or "short"
  req.metadata.streaming = req.stream
end
