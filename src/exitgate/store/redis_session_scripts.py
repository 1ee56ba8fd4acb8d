"""The Lua scripts of `RedisSessionStore` (store/redis_sessions.py): one per operation of the
session-store contract, each atomic on the Redis server. The key layout and the record's
fields are described in that module's docstring; the arguments are described here, at each
script."""

from __future__ import annotations

# Shared prologue: KEYS[1] record hash, KEYS[2] package zset, KEYS[3] global zset;
# ARGV[1] now (µs; "" = Redis's TIME), ARGV[2] default idle (µs), ARGV[3] member of the
# global zset, ARGV[4] session id. Fields: r n c a u q k, then the session's own timings
# (legacy usernames): I idle (µs), L lifetime (µs), H hold (s); "" when not set; E epoch.
# `live()` deletes an expired record (what the TTL will do anyway) and returns its fields.
# TIME before writes needs effects replication: the default from Redis 5, asked for on 3.2-4.
EXPIRY = """
local now = tonumber(ARGV[1])
if ARGV[1] == '' then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local nows = string.format('%.0f', now)
local idle = tonumber(ARGV[2])
local function expiry(f)
  local i = idle
  if f[8] and f[8] ~= '' then i = tonumber(f[8]) end
  local e = tonumber(f[5]) + i
  if f[9] and f[9] ~= '' then
    local l = tonumber(f[3]) + tonumber(f[9])
    if l < e then e = l end
  end
  return e
end
"""
PROLOGUE = EXPIRY + """
local function drop()
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
local function live()
  local f = redis.call('HMGET', KEYS[1], 'r', 'n', 'c', 'a', 'u', 'q', 'k', 'I', 'L', 'H', 'E')
  if not f[1] then return nil end
  if not f[11] then f[11] = '0' end
  if now >= expiry(f) then
    drop()
    return nil
  end
  return f
end
local function touch(f)
  local e = expiry(f)
  local ttl = math.ceil((e - now) / 1000)
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], string.format('%.0f', e), ARGV[4])
  if redis.call('PTTL', KEYS[2]) < ttl + 1000 then
    redis.call('PEXPIRE', KEYS[2], ttl + 1000)
  end
  redis.call('ZADD', KEYS[3], string.format('%.0f', e), ARGV[3])
end
local function put(f)
  redis.call('HSET', KEYS[1], 'r', f[1], 'n', f[2], 'c', f[3], 'a', f[4], 'u', f[5],
    'q', f[6], 'k', f[7], 'I', f[8], 'L', f[9], 'H', f[10], 'E', f[11])
end
"""

GET = PROLOGUE + "return live()"

# ARGV[5] rules, ARGV[6] candidate node ("": none), ARGV[7..9] timings I L H for a record
# this call claims. Returns {now, 0 untouched / 1 counted / 2 claimed, last_used before,
# fields...} (no fields: none). The one script of a request: counts a kept session and
# restarts its idle expiry, or claims a new one for the candidate, counted on arrival.
TOUCH = PROLOGUE + """
local f = live()
if not f then
  if ARGV[6] == '' then return {nows, 0, ''} end
  f = {ARGV[5], ARGV[6], nows, nows, nows, '1', '1', ARGV[7], ARGV[8], ARGV[9], '0'}
  put(f)
  touch(f)
  return {nows, 2, '0', unpack(f)}
end
if f[1] ~= ARGV[5] or f[6] == '0' then return {nows, 0, '', unpack(f)} end
local prev = f[5]
local q = tonumber(f[6]) + 1
local k = tonumber(f[7]) + 1
redis.call('HSET', KEYS[1], 'u', nows, 'q', q, 'k', k)
f[5] = nows; f[6] = tostring(q); f[7] = tostring(k)
touch(f)
return {nows, 1, prev, unpack(f)}
"""

# ARGV[5] rules, ARGV[6] node, ARGV[7..9] timings I L H for a record this call creates
CLAIM = PROLOGUE + """
local f = live()
if f then return f end
f = {ARGV[5], ARGV[6], nows, nows, nows, '0', '0', ARGV[7], ARGV[8], ARGV[9], '0'}
put(f)
touch(f)
return f
"""

# ARGV[5] rules, ARGV[6] expected node, ARGV[7] new node, ARGV[8] expected epoch ("": any),
# ARGV[9] node_requests to start the new node with (1: the moving request was counted)
REBIND = PROLOGUE + """
local f = live()
if not f then return nil end
if f[1] ~= ARGV[5] or f[2] ~= ARGV[6] or ARGV[6] == ARGV[7] then return f end
if ARGV[8] ~= '' and f[11] ~= ARGV[8] then return f end
local e = tostring(tonumber(f[11]) + 1)
redis.call('HSET', KEYS[1], 'n', ARGV[7], 'a', nows, 'k', ARGV[9], 'E', e)
f[2] = ARGV[7]; f[4] = nows; f[7] = ARGV[9]; f[11] = e
return f
"""

# ARGV[5] rules, ARGV[6] node, ARGV[7..9] timings. Returns nil (and writes nothing) when the
# rules differ.
RECORD = PROLOGUE + """
local f = live()
if not f then
  f = {ARGV[5], ARGV[6], nows, nows, nows, '1', '1', ARGV[7], ARGV[8], ARGV[9], '0'}
  put(f)
  touch(f)
  return f
end
if f[1] ~= ARGV[5] then return nil end
local q = tonumber(f[6]) + 1
local k = tonumber(f[7])
if f[2] == ARGV[6] then k = k + 1 end
redis.call('HSET', KEYS[1], 'u', nows, 'q', q, 'k', k)
f[5] = nows; f[6] = tostring(q); f[7] = tostring(k)
touch(f)
return f
"""

# ARGV[5] node: drop the record only while it is provisional and on that node
RELEASE = PROLOGUE + """
local f = redis.call('HMGET', KEYS[1], 'n', 'q')
if f[1] == ARGV[5] and f[2] == '0' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[3])
  return 1
end
return 0
"""

# ARGV[5] rules, ARGV[6] node, ARGV[7] epoch, ARGV[8] last_used written by the request's touch,
# ARGV[9] last_used before it ("0": the request claimed the session in `touch`). A request
# counted on arrival reached no node: give it back.
REFUND = PROLOGUE + """
local f = live()
if not f or f[1] ~= ARGV[5] or f[6] == '0' then return 0 end
local q = tonumber(f[6]) - 1
local untouched = f[5] == ARGV[8]
if ARGV[9] == '0' then
  -- the request claimed the session in `touch`: drop it unless others came meanwhile
  if q < 1 and untouched then
    drop()
    return 1
  end
elseif untouched then
  f[5] = ARGV[9]
end
if q < 1 then q = 1 end
local k = tonumber(f[7])
if f[2] == ARGV[6] and f[11] == ARGV[7] and k > 0 then k = k - 1 end
if k > q then k = q end  -- a count it moved to a new node (replaced a claim) leaves with it
f[6] = tostring(q); f[7] = tostring(k)
if now >= expiry(f) then
  drop()
  return 1
end
redis.call('HSET', KEYS[1], 'u', f[5], 'q', q, 'k', k)
touch(f)
return 1
"""

DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
return n
"""

# KEYS[1] package zset; ARGV[1] now, ARGV[2] idle, ARGV[3] record key prefix.
LIST = EXPIRY + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', nows)
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, sid in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[3] .. sid,
    'r', 'n', 'c', 'a', 'u', 'q', 'k', 'I', 'L', 'H', 'E')
  if f[1] and now < expiry(f) and f[6] ~= '0' then
    table.insert(out, sid)
    for i = 1, 11 do table.insert(out, f[i] or '') end
  end
end
return out
"""

# KEYS[1] global zset; ARGV[1] now, ARGV[2] idle, ARGV[3] key prefix. Drops every record whose
# expiry score is at or before now and that is not live by its own fields.
EXPIRE = EXPIRY + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', nows)
local dropped = 0
for _, member in ipairs(due) do
  local sep = string.find(member, '\\0', 1, true)
  local pkg = string.sub(member, 1, sep - 1)
  local sid = string.sub(member, sep + 1)
  local key = ARGV[3] .. 's:' .. pkg .. ':' .. sid
  local f = redis.call('HMGET', key, 'r', 'n', 'c', 'a', 'u', 'q', 'k', 'I', 'L', 'H')
  if f[1] and now < expiry(f) then
    redis.call('ZADD', KEYS[1], string.format('%.0f', expiry(f)), member)
  else
    if redis.call('DEL', key) == 1 then dropped = dropped + 1 end
    redis.call('ZREM', ARGV[3] .. 'sp:' .. pkg, sid)
    redis.call('ZREM', KEYS[1], member)
  end
end
return dropped
"""
