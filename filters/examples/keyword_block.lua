-- Keyword block: refuses prompts that mention a forbidden word (case-insensitive).
-- settings.vars.words = ["project-x", ...]; default: "forbidden".
local words = (wharf.vars and wharf.vars.words) or { "forbidden" }

local function text_of(content)
  if type(content) == "string" then return content end
  local out = {}
  if type(content) == "table" then
    for _, part in ipairs(content) do
      if type(part) == "table" and type(part.text) == "string" then out[#out + 1] = part.text end
    end
  end
  return table.concat(out, " ")
end

function pre_route(req)
  local msgs = req.body and req.body.messages
  if not msgs then return end
  for _, m in ipairs(msgs) do
    local t = string.lower(text_of(m.content))
    for _, w in ipairs(words) do
      if string.find(t, string.lower(w), 1, true) then
        wharf.block(403, "keyword_blocked", "the prompt contains a blocked keyword")
      end
    end
  end
end
