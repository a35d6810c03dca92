"""Per-stream state in Redis: every key name and every Lua script live here.

One record per (model, stream), a single Redis string (its layout: ``record.py``). Beside the
record, each stream has an event log: a Redis Stream with one entry per write, whose id is the
write's last event id (``{generation}-{seq}``) and which holds all the write's events: a write of
several steps in the live message's encoding (``events.log_append_packed``), a write of one step
in five short fields; logs written before entries were per write hold one entry per step, and
every form is read alike (``events.log_events``). The log's bound counts events; the entry forms,
how the bound is kept, and when the age bound is applied are said above ``_LOG_LUA``.

A stream is named by (tenant, model, stream). Its keys carry a Redis Cluster hash tag per stream,
so its record, log and channel share a slot: ``{prefix}:{model:stream}:state`` for the default
tenant (the layout of before tenants, so existing streams are the default tenant's), and
``{prefix}:{tenant/model:stream}:state`` for any other (``/`` occurs in no tenant, model or stream
name, so one tenant's globs never match another's keys). A tenant with a ``max_streams`` limit
also has a set of its live streams, ``{prefix}:{tenant}:streams`` (``QUOTA_SCRIPT``).

A batch reads every state with one MGET and writes every stream with one call of
``COMMIT_SCRIPT``, which compares each stream's guard (generation and seq) before it sets the new
record, appends the write's entry and announces it: a replica that lost a race gets 0 for that
stream and recomputes it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

from redis._parsers import _AsyncRESP2Parser
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from ..core.errors import NotPersisted, NotReplicated, RedisUnavailable, ServiceError
from ..core.ids import DEFAULT_TENANT
from ..core.metrics import Metrics
from ..core.settings import MEMORY, Durability
from .redis_clients import RedisClients

__all__ = [
    "ANNOUNCE_SCRIPT",
    "COMMIT_SCRIPT",
    "CONFIRM_SCRIPT",
    "LOG_SCRIPT",
    "QUOTA_SCRIPT",
    "Announcement",
    "Confirm",
    "DurabilityError",
    "LogAppend",
    "LogChunk",
    "LogPolicy",
    "StateStore",
    "StreamId",
    "StreamKeys",
    "Write",
]


# The event log. Every write of a stream appends ONE entry to the stream's log, holding all the
# events (steps) of the write, and announces them on the stream's shard channel, in the same
# script call as the state write: no step without its event, no event without its step.
#
# An entry's id is its last event's id, "{generation}-{seq}". Its fields, in three forms:
# - a write of several steps: e, the write's events exactly as announced (the live message's
#   body, ``events.log_append_packed``: a header, the model version, then every event's id,
#   values, prediction and reading ts), and t, the commit time in Unix ms;
# - a write of one step: m (model version), t, x (values, float64), y (prediction, float32) and
#   r (the reading's own ts as JSON, or empty), cut by the script from that same body: the
#   smaller form, as the e form's header and ids would more than double a one-step event;
# - logs written before entries were per write hold one-step entries v, t, x, y, r (v the model
#   version); their log's entries-added counts entries ever added, not events (see below).
# The first field name tells them apart; t is always the second, where the previous version of
# this script also reads it. Readers expand an entry into its events (``events.log_events``): a
# read after an id inside an entry returns that entry (its last id is above), and the reader
# drops the events at or below.
#
# Counting and trimming. The bound (ARGV[3]) counts events, not entries. A log's count of the
# events it holds lives in the log itself, as its entries-added (XINFO STREAM; Redis keeps it for
# consumer groups, which these logs never have): an XADD adds one, which is right for a write of
# one step; the script sets it (XSETID ENTRIESADDED) after a write of several steps and after a
# trim. While a v entry is at the head, a checkpoint counts the log by reading it instead (once
# per checkpoint, and only until the entries of before the upgrade have left the log).
# Trimming removes whole entries from the head and, when the bound falls inside an entry, hides
# that entry's oldest events by raising the log's max-deleted-entry-id to the last event removed:
# readers drop the events at or below it. So the events a reader can get are exactly the newest
# the bound allows, and max-deleted-entry-id is always the last event id removed (it is what
# tells a resuming reader exactly what it lost); memory holds at most one entry's worth more.
#
# When: a write reads the log's state (XINFO STREAM) only at a checkpoint: a write that starts a
# generation or creates the log, a write of several steps, or a write whose seqs pass a multiple
# of k = max(1, floor(bound / 10)). At a checkpoint the log is trimmed back to the bound if it is
# over it and the write passed such a multiple, or if it is k or more over it; in between, fewer
# than k events arrive. So after any write a log holds at most bound + k - 1 events, and a busy
# stream of one-step writes reads the log's state once every k writes and trims then.
# The age bound is applied at checkpoints (to the entries at the head: whole entries, as a
# write's events share their commit time), and on read: LOG_SCRIPT treats the entries at the head
# older than the reader's cutoff as deleted, so a reader is never sent an event older than the
# bound, however long ago the stream's last checkpoint was. A log expires that long after its
# last write (PEXPIRE on every write).
#
# Shared by COMMIT_SCRIPT and LOG_SCRIPT.
_LOG_LUA = """
local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return string.sub(id, 1, dash - 1), string.sub(id, dash + 1)
end
local function num_less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function id_less(a, b)
  local ag, as = id_parts(a)
  local bg, bs = id_parts(b)
  if ag ~= bg then return num_less(ag, bg) end
  return num_less(as, bs)
end
local function stream_info(log)
  local reply = redis.call('XINFO', 'STREAM', log)
  local info = {}
  for j = 1, #reply, 2 do info[reply[j]] = reply[j + 1] end
  return info
end
-- An entry is {id, {field, value, ...}}: e, t (several steps); m, t, x, y, r (one step); or v,
-- t, x, y, r (one step, from before entries were per write).
local function size(entry)
  local fields = entry[2]
  if fields[1] == 'e' then return (struct.unpack('<I4', fields[2], 5)) end
  return 1
end
local function aged(entry, cutoff)
  return cutoff > 0 and tonumber(entry[2][4]) < cutoff
end
"""

# KEYS: per stream i, KEYS[2i-1] its state key and KEYS[2i] its event log (one hash slot).
# ARGV[1] state TTL ms (0: none); ARGV[2] log TTL ms (0: none); ARGV[3] log bound (events);
# ARGV[4] log age cutoff in Unix ms (0: none); ARGV[5] commit time in Unix ms; ARGV[6] every
# stream's part, packed (``_pack_writes``): per stream, in KEYS order, the expected guard (""
# means the key must not exist), new record, channel, previous event id ("" for a new
# generation: the log tells), floor id (see below), the write's first and last event ids and the
# live message's body (from which the log entry is made), each a u32 LE length and its bytes;
# then one byte, 1 if the write's seqs pass a multiple of k (from the previous seq, exclusive, to
# its last; computed in Python, whose integers are exact at any size). One packed argument rather
# than a dozen per stream: redis-py encodes every argument in Python, which cost more than the
# rest of the batch.
#
# GETRANGE returns "" for a missing key, so one comparison covers "new stream" and "unchanged".
# A record whose generation, seq and updated_at (its first 24 bytes) equal the new one's is this
# very write, landed by an earlier attempt of the same call (the client resends a call that timed
# out): that counts as written, so a resent call can never look like a lost race and be applied
# twice.
# A new generation must sort after everything its log ever held (ids must increase); if it does not
# (two replicas' clocks), nothing is written and the log's last generation is returned, so the
# caller retries with a later one.
# A log created anew (never written, or expired: XADD NOMKSTREAM says so without a command of its
# own) starts with a floor as its max-deleted-entry-id, an id just below its first event's, so a
# reader holding an id from an earlier life of the log learns that whatever followed it is gone.
# A write that starts a new generation (guard "") also publishes "{state key}\n{floor id}" on the
# plain channel "{prefix}:new-streams" (StateStore.new_streams_channel), so that a prefix
# subscriber learns of a stream it has not seen: once per generation, never per step. The state
# key names the stream's tenant (StateStore.parse_new_stream), so one channel serves every tenant
# and a subscriber hears only of its own tenant's streams.
# Returns per stream 1 (written), 0 (guard differed: someone else advanced or ended the stream) or
# the log's last generation as a string (generation too old).
# ARGV[7] = "1" (``--durability`` aof or replicas:N): announce nothing, as the write is not yet
# acknowledged; return {flags, prevs} instead, prevs[i] the previous event id the announcement
# of stream i names (the log's, for a new generation), so that the service announces exactly
# these messages once WAIT or WAITAOF confirms them (ANNOUNCE_SCRIPT).
COMMIT_SCRIPT = (
    _LOG_LUA
    + """
-- The decimal text of the unsigned 64-bit little-endian integer at byte `at` of `s`, exact
-- (Lua's numbers are doubles: above 2^53 it divides 16-bit limbs by 10^7).
local function u64(s, at)
  local lo, hi = struct.unpack('<I4I4', s, at)
  if hi < 2097152 then return string.format('%.0f', hi * 4294967296 + lo) end
  local limbs = {math.floor(hi / 65536), hi % 65536, math.floor(lo / 65536), lo % 65536}
  local text = ''
  while true do
    local rem = 0
    for j = 1, 4 do
      local cur = rem * 65536 + limbs[j]
      limbs[j] = math.floor(cur / 10000000)
      rem = cur - limbs[j] * 10000000
    end
    if limbs[1] + limbs[2] + limbs[3] + limbs[4] == 0 then
      return string.format('%d', rem) .. text
    end
    text = string.format('%07d', rem) .. text
  end
end
-- The id of the i-th event of a write's entry (its body: a 17-byte header whose last byte is the
-- version's length, the version, then each event's generation and seq as u64).
local function nth_id(entry, i)
  local body = entry[2][2]
  local at = 18 + string.byte(body, 17) + 16 * (i - 1)
  return u64(body, at) .. '-' .. u64(body, at + 8)
end
-- How many of an entry's events are at or below id `deleted` (hidden by a trim).
local function hidden(entry, deleted)
  if not id_less(deleted, entry[1]) then return size(entry) end
  if entry[2][1] ~= 'e' or id_less(deleted, nth_id(entry, 1)) then return 0 end
  local lo, hi = 1, size(entry) - 1
  while lo < hi do
    local mid = math.ceil((lo + hi) / 2)
    if id_less(deleted, nth_id(entry, mid)) then hi = mid - 1 else lo = mid end
  end
  return lo
end
-- Every entry of the log, oldest first, and the events it holds.
local function read_all(log, deleted)
  local all, total, start = {}, 0, '-'
  while true do
    local page = redis.call('XRANGE', log, start, '+', 'COUNT', 100)
    for _, entry in ipairs(page) do
      all[#all + 1] = entry
      total = total + size(entry)
    end
    if #page < 100 then break end
    start = '(' .. page[#page][1]
  end
  if all[1] then total = total - hidden(all[1], deleted) end
  return all, total
end
-- The smallest id above `id` (what XTRIM MINID keeps from).
local function incr(text)
  local i = #text
  while i > 0 and string.byte(text, i) == 57 do i = i - 1 end
  if i == 0 then return '1' .. string.rep('0', #text) end
  return string.sub(text, 1, i - 1) .. string.char(string.byte(text, i) + 1)
    .. string.rep('0', #text - i)
end
local function above(id)
  local g, s = id_parts(id)
  if s == '18446744073709551615' then return incr(g) .. '-0' end
  return g .. '-' .. incr(s)
end
-- The bounds, once a write's entry (id `last`) is the log's newest: `count` events held by the
-- log's counter, `deleted` its max-deleted-entry-id, `head` its first entry (nil: this write's
-- own). Returns the count and max-deleted id after trimming.
local function settle(log, last, count, deleted, head, max_len, k, passed, cutoff)
  -- Walk from the head (known already, unless it is this write's), reading on only as far as
  -- the cut goes; a log counted by reading it is walked in what was read.
  local page, at, seen, first = {head}, 1, nil, true
  local counted = head and head[2][1] == 'v'
  if counted then page, count = read_all(log, deleted) end
  local drop = 0
  if count > max_len and (passed or count >= max_len + k) then drop = count - max_len end
  if drop == 0 and not (head and aged(head, cutoff)) then return count, deleted end
  local dropped, cut, removed, old, per, ages = 0, deleted, nil, false, 1, false
  while true do
    local entry = page[at]
    if entry == nil and counted then break end
    if entry == nil then
      -- as many entries as the events still to drop take, if they are the size of the last
      local want = math.min(100, math.max(1, math.ceil((drop - dropped) / per)))
      if ages then want = math.max(want, 16) end
      page, at = redis.call('XRANGE', log, seen and '(' .. seen or '-', '+', 'COUNT', want), 1
      entry = page[1]
      if entry == nil then break end
    end
    at, seen = at + 1, entry[1]
    local gone = 0
    if first then gone = hidden(entry, deleted) end
    first = false
    if entry[2][1] == 'v' then old = true end
    per = size(entry)
    local held = per - gone
    ages = aged(entry, cutoff)
    if entry[1] ~= last and (ages or dropped + held <= drop) then
      dropped, cut, removed = dropped + held, entry[1], entry[1]
      -- the cut is made: what follows stays (an aged entry behind it waits for a checkpoint)
      if dropped >= drop and not ages then break end
    else
      local part = math.min(drop - dropped, held - 1)
      if part > 0 then
        dropped, cut = dropped + part, nth_id(entry, gone + part)
      end
      break
    end
  end
  if removed then redis.call('XTRIM', log, 'MINID', above(removed)) end
  if old and not counted then
    -- an entry of an earlier log behind entries of this form (both versions wrote during an
    -- upgrade): its counter may be off, so count what is left
    local _, left = read_all(log, cut)
    return left, cut
  end
  return count - dropped, cut
end
-- The fields of a one-step entry (m t x y r), cut from the write's message body.
local function one_step(message, now)
  local inputs, outputs = struct.unpack('<I2I2', message)
  local v_end = 17 + string.byte(message, 17)
  local x_at = v_end + 17
  local y_at = x_at + 8 * inputs
  local r_at = y_at + 4 * outputs
  local stamp = ''
  if #message > r_at then stamp = string.sub(message, r_at + 1, -2) end  -- "[ts]"
  return {'m', string.sub(message, 18, v_end), 't', now, 'x', string.sub(message, x_at, y_at - 1),
          'y', string.sub(message, y_at, r_at - 1), 'r', stamp}
end

local state_ttl = tonumber(ARGV[1])
local log_ttl = tonumber(ARGV[2])
local max_len = tonumber(ARGV[3])
local cutoff = tonumber(ARGV[4])
local now = ARGV[5]
local defer = ARGV[7] == '1'
local k = math.max(1, math.floor(max_len / 10))
local written, prevs = {}, {}
local blob = ARGV[6]
local at = 1
for i = 1, #KEYS / 2 do
  local key, log = KEYS[2 * i - 1], KEYS[2 * i]
  local guard, record, channel, prev, floor, first, last, message, passed
  guard, record, channel, prev, floor, first, last, message, passed, at = struct.unpack(
    '<I4c0I4c0I4c0I4c0I4c0I4c0I4c0I4c0B', blob, at)
  local n = struct.unpack('<I4', message, 5)
  local head = redis.call('GETRANGE', key, 0, 23)
  if string.sub(head, 1, 16) == guard then
    local exists, info = true, nil
    if guard == '' then
      exists = redis.call('EXISTS', log) == 1
      if exists then
        info = stream_info(log)
        if id_less(info['last-generated-id'], first) then
          prev = info['last-generated-id']
        else
          written[i] = id_parts(info['last-generated-id'])
        end
      end
    end
    if written[i] == nil then
      if state_ttl > 0 then
        redis.call('SET', key, record, 'PX', state_ttl)
      else
        redis.call('SET', key, record)
      end
      local fields = {'e', message, 't', now}
      if n == 1 then fields = one_step(message, now) end
      local added = exists and redis.call('XADD', log, 'NOMKSTREAM', last, unpack(fields))
      -- count: the events the log holds now, where the write is a checkpoint; counter: what its
      -- entries-added says after the XADD
      local count, counter, deleted, oldest
      passed = passed == 1
      if not added then
        redis.call('XADD', log, last, unpack(fields))
        count, counter, deleted, passed = n, -1, floor, true
      elseif info then
        count, counter = info['entries-added'] + n, info['entries-added'] + 1
        deleted, oldest, passed = info['max-deleted-entry-id'], info['first-entry'], true
      elseif n > 1 or passed then
        info = stream_info(log)
        count, counter = info['entries-added'] + n - 1, info['entries-added']
        deleted, oldest = info['max-deleted-entry-id'], info['first-entry']
      end
      if count then
        local held, cut = settle(log, last, count, deleted, oldest or nil, max_len, k, passed,
                                 cutoff)
        if held ~= counter or cut ~= deleted or not added then
          redis.call('XSETID', log, last, 'ENTRIESADDED', held, 'MAXDELETEDID', cut)
        end
      end
      if log_ttl > 0 then redis.call('PEXPIRE', log, log_ttl) end
      if defer then
        prevs[i] = prev
      else
        redis.call('SPUBLISH', channel, prev .. '\\n' .. message)
        if guard == '' then
          -- A new generation, once per stream life: announced on the deployment's new-streams
          -- channel (plain PUBLISH reaches every node of a cluster) for prefix subscribers.
          local tag = string.find(key, '{', 1, true)
          redis.call('PUBLISH', string.sub(key, 1, tag - 1) .. 'new-streams',
                     key .. '\\n' .. floor)
        end
      end
      written[i] = 1
    end
  elseif head == string.sub(record, 1, 24) then
    written[i] = 1
    if defer then
      -- Landed by an earlier attempt of this call, on another connection: a write here (the
      -- record's first byte over itself) makes the confirmation that follows on this
      -- connection cover it.
      redis.call('SETRANGE', key, 0, string.sub(head, 1, 1))
      prevs[i] = prev
    end
  else
    written[i] = 0
  end
end
if defer then
  for i = 1, #KEYS / 2 do prevs[i] = prevs[i] or '' end
  return {written, prevs}
end
return written
"""
)

# Reads a stream's event log, all from one instant: whether it exists, the last id it ever held,
# the largest id a reader may no longer get, and the entries after ARGV[1] ("": from the start)
# holding about ARGV[2] events (whole entries, so up to one entry's more), and whether more
# follow. ARGV[3]: the reader's age cutoff in Unix ms (0: none): entries at the head older than it
# count as deleted (the age bound applied on read). KEYS[1]: the log. ARGV[4] = "1" (a reader at
# --durability aof or replicas:N): when entries are read, a write of the log's last id over itself,
# so that the WAIT or WAITAOF that follows on this connection covers every entry read: a reader
# hands on only what is acknowledged, as the live announcements do.
LOG_SCRIPT = (
    _LOG_LUA
    + """
local log = KEYS[1]
if redis.call('EXISTS', log) == 0 then return {0} end
local info = stream_info(log)
local last, deleted = info['last-generated-id'], info['max-deleted-entry-id']
local want, cutoff = tonumber(ARGV[2]), tonumber(ARGV[3])
local entries, more = {}, 0
if want > 0 then
  local head = info['first-entry']
  if head and aged(head, cutoff) then
    local start, stop = '-', false
    while not stop do
      local page = redis.call('XRANGE', log, start, '+', 'COUNT', 100)
      for _, entry in ipairs(page) do
        if not aged(entry, cutoff) then
          stop = true
          break
        end
        if id_less(deleted, entry[1]) then deleted = entry[1] end
      end
      if #page < 100 then stop = true end
      if not stop then start = '(' .. page[#page][1] end
    end
  end
  local from = ARGV[1]
  if from == '' or id_less(from, deleted) then from = deleted end
  local page = redis.call('XRANGE', log, '(' .. from, '+', 'COUNT', want)
  local events = 0
  for j, entry in ipairs(page) do
    entries[j] = entry
    events = events + size(entry)
    if events >= want then break end
  end
  if #entries < #page or #page == want then more = 1 end
end
if ARGV[4] == '1' and #entries > 0 then redis.call('XSETID', log, last) end
return {1, last, deleted, entries, more}
"""
)

# With ``--durability`` aof or replicas:N, a retry answered from a stored record (a duplicate)
# is acknowledged like a write: this call writes the record's first byte over itself, if the
# record is still the one the batch read (KEYS[1]; ARGV[1] its guard), so that the WAIT or
# WAITAOF that follows on the same connection covers the record, whichever connection wrote it.
# Returns 1, or 0 when the record changed since it was read.
CONFIRM_SCRIPT = """
if redis.call('GETRANGE', KEYS[1], 0, 15) ~= ARGV[1] then return 0 end
redis.call('SETRANGE', KEYS[1], 0, string.sub(ARGV[1], 1, 1))
return 1
"""

# Announces acknowledged writes (``--durability`` aof or replicas:N), as COMMIT_SCRIPT does at
# the memory level: per write, SPUBLISH of its message on its stream's shard channel and, for a
# new generation, PUBLISH on the new-streams channel (ARGV[1]). ARGV[2] packs, per write, its
# channel, its message and its new-streams message ("" if none), each a u32 LE length and its
# bytes. KEYS: none on a standalone Redis; on a cluster, the one stream's state key, which
# routes the call to the node of its channel.
ANNOUNCE_SCRIPT = """
local blob, at = ARGV[2], 1
while at <= #blob do
  local channel, message, new_stream
  channel, message, new_stream, at = struct.unpack('<I4c0I4c0I4c0', blob, at)
  redis.call('SPUBLISH', channel, message)
  if #new_stream > 0 then redis.call('PUBLISH', ARGV[1], new_stream) end
end
return 1
"""

# The script's sha, as Redis computes it: a cluster's nodes are sent EVALSHA without loading it
# first, and a node that lacks it is sent the script itself (``StateStore.commit_many``).
_COMMIT_SHA = hashlib.sha1(COMMIT_SCRIPT.encode()).hexdigest()

# Live streams per tenant (max_streams). A tenant with a limit has a set of the state keys of its
# live streams, "{prefix}:{tenant}:streams": in a slot of its own, not its streams', so it is
# never part of a stream's script call. A stream joins it when it starts a generation (a new
# stream; after an end, DELETE or expiry; v2's sequence_start): the batcher sends one call of this
# script per tenant, for all of the tenant's new generations in the batch, in one round trip (per
# node on a cluster), and only when the batch has such streams. No other step touches the set.
# It leaves the set when it ends (DELETE, v2's sequence_end) or expires (the expiry watcher).
#
# The set may drift from the streams that exist; how far, and how it comes back:
# - too many members (the limit bites early): an expiry the watcher missed (pub/sub does not
#   queue; no watcher runs while the service is down), a removal that failed with Redis, a
#   stream admitted whose first write then failed. Repaired at the limit: when a new generation
#   is refused, the members whose state key no longer exists are dropped (PRUNE_SCRIPT on a
#   standalone Redis; on a cluster EXISTS per member, pipelined per node, then SREM) and the
#   refused streams are asked for again. A process does that at most once per tenant per
#   repair interval (batcher.py), so a tenant that keeps hitting its limit cannot make every
#   refusal cost a read of the whole set; between repairs a refusal costs the one call.
# - too few members (the limit bites late): a stream that ends or expires on one replica while
#   another starts it again in the same milliseconds (the removal can land after the new
#   generation's admission), and, on a cluster or when a repair runs while another process has
#   admitted a stream but not yet written it, a member dropped as dead that just came to life.
#   Each such stream goes uncounted until it ends; the count is off by at most the generations
#   started in those instants. A limit set for a tenant whose streams are already live counts
#   them as they start their next generation.
#
# KEYS[1]: the tenant's set; ARGV[1]: its limit; ARGV[2..]: state keys of streams starting a
# generation. Returns per stream 1 (admitted: already a member, or added within the limit) or 0
# (refused: the set is at the limit; nothing is added).
QUOTA_SCRIPT = """
local limit = tonumber(ARGV[1])
local count = redis.call('SCARD', KEYS[1])
local admitted = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then
    admitted[i - 1] = 1
  elseif count < limit then
    redis.call('SADD', KEYS[1], ARGV[i])
    count = count + 1
    admitted[i - 1] = 1
  else
    admitted[i - 1] = 0
  end
end
return admitted
"""

# The repair of a tenant's set on a standalone Redis: KEYS[1] the set, KEYS[2..] its members
# (state keys, read just before). Drops each member whose state key does not exist, in one atomic
# step, so a stream written meanwhile is not dropped; returns how many were dropped.
PRUNE_SCRIPT = """
local dropped = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    dropped = dropped + redis.call('SREM', KEYS[1], KEYS[i])
  end
end
return dropped
"""

T = TypeVar("T")


class StreamId(NamedTuple):
    """What names a stream: its tenant, its model and its id."""

    tenant: str
    model: str
    stream: str


class StreamKeys(NamedTuple):
    """A stream's Redis names, all in one cluster hash slot."""

    state: str  # the record
    log: str  # the event log (a Redis Stream)
    channel: str  # the shard channel live events are announced on


class LogAppend(NamedTuple):
    """The events of one write: one entry of the stream's log, and its announcement."""

    prev: str  # the event id just before the first ("" for a new generation: the log knows)
    floor: str  # an id just below the first event's, marking where a log created anew begins
    first: str  # the write's first event id
    last: str  # its last event id: the log entry's id
    message: bytes  # the live message's body, from which the script makes the log entry
    seqs: tuple[int, int]  # the seq before the first (the previous one's, if known) and the last


@dataclass(frozen=True)
class LogPolicy:
    max_len: int  # events kept per stream
    max_age_ms: int  # events older than this are dropped, and an idle log expires; 0: no bound


class Write(NamedTuple):
    keys: StreamKeys
    expected_guard: bytes  # b"" for a stream that must not exist yet
    record: bytes
    log: LogAppend


class Confirm(NamedTuple):
    """A stored record whose held results a batch answers from (a duplicate), to be acknowledged
    at the ``--durability`` level like the batch's writes."""

    key: str  # the state key
    guard: bytes  # the guard of the record as read


class Announcement(NamedTuple):
    """An acknowledged write's announcements, which the commit left to the service."""

    key: str  # the stream's state key
    channel: str  # its shard channel
    message: bytes  # the previous event id, a newline, the live message's body
    new_stream: bytes  # for a new generation, its new-streams message; else b""


@dataclass(frozen=True)
class LogChunk:
    """A read of a stream's event log, all from one instant."""

    exists: bool
    last_id: str  # the last id the log ever held ("" when it does not exist)
    # The largest event id a reader can no longer get ("0-0": none): removed by a trim, hidden in
    # an entry a trim cut through, or older than the reader's age cutoff.
    deleted_id: str
    entries: list[tuple[str, dict[bytes, bytes]]]  # (id, fields), oldest first
    more: bool = False  # the read stopped at its count: more entries may follow


class StateStore:
    """Reads and writes stream records; every Redis failure becomes ``RedisUnavailable``.

    Works with a standalone Redis, the primary Redis Sentinel names, and a Redis Cluster (found
    out on first contact, ``INFO cluster``), so the same ``REDIS_URL`` setting serves all three
    (``redis_clients.py`` makes the clients and says how each follows a failover). Standalone and
    Sentinel: one ``MGET`` per batch and one call of ``COMMIT_SCRIPT`` over every stream. Cluster:
    a stream's keys share a hash slot but streams do not, so reads are one ``GET`` and writes one
    single-key script call per stream, sent as one pipeline per node, the nodes in parallel; a
    node that fails fails only its own streams (``RedisUnavailable`` in their place), and the
    others are answered.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        metrics: Metrics,
        timeout_s: float,
        durability: Durability = MEMORY,
        durability_timeout_ms: int = 1000,
    ) -> None:
        self.prefix = prefix
        self.durability = durability
        self.durability_timeout_ms = durability_timeout_ms
        # The command that confirms a batch's writes on their own connection (None: memory).
        # WAIT and WAITAOF count the writes made on the connection they are sent on (up to its
        # last one), so each goes in the same pipeline as the writes it confirms, per node.
        self._ack: tuple[Any, ...] | None = None
        if durability.level == "aof":
            self._ack = ("WAITAOF", 1, 0, durability_timeout_ms)
        elif durability.level == "replicas":
            self._ack = ("WAIT", durability.replicas, durability_timeout_ms)
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            # One immediate retry covers a pooled connection that died with a restarted Redis;
            # more would only delay the 503 a client needs to hear.
            "retry": Retry(NoBackoff(), 1),
        }
        if os.environ.get("LSTM_BENCH_HIREDIS") == "off":  # a benchmark's comparison only
            self._options["parser_class"] = _AsyncRESP2Parser
        # Every client, and how each follows a failover (redis_clients.py).
        self.clients = RedisClients(url, timeout_s, self._options)
        self._commit_sha: str | None = None
        self._announce_sha: str | None = None

    # -- key names ---------------------------------------------------------------------------
    # On the hot path a key is built once per stream per batch: one comparison of short strings
    # and one f-string, as before tenants.

    def _tag(self, tenant: str, model: str, stream: str) -> str:
        """What every key of a stream starts with: the prefix and the cluster hash tag."""
        if tenant == DEFAULT_TENANT:
            return f"{self.prefix}:{{{model}:{stream}}}"
        return f"{self.prefix}:{{{tenant}/{model}:{stream}}}"

    def state_key(self, tenant: str, model: str, stream: str) -> str:
        if tenant == DEFAULT_TENANT:
            return f"{self.prefix}:{{{model}:{stream}}}:state"
        return f"{self.prefix}:{{{tenant}/{model}:{stream}}}:state"

    def stream_keys(self, tenant: str, model: str, stream: str) -> StreamKeys:
        tag = self._tag(tenant, model, stream)
        return StreamKeys(f"{tag}:state", f"{tag}:events", f"{tag}:live")

    def _glob_prefix(self) -> str:
        """The prefix with Redis glob characters escaped (model, tenant and stream names hold
        none; a prefix may)."""
        return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix)

    @staticmethod
    def _namespace(tenant: str) -> str:
        """What a tenant's keys hold before the model inside the hash tag."""
        return "" if tenant == DEFAULT_TENANT else f"{tenant}/"

    def state_key_glob(self, tenant: str, model: str) -> str:
        """A Redis glob matching the state keys of every stream of ``tenant`` and ``model`` and
        nothing else."""
        return f"{self._glob_prefix()}:{{{self._namespace(tenant)}{model}:*}}:state"

    def state_key_globs(self, model: str) -> tuple[str, str]:
        """Redis globs that together match the state keys of every stream of ``model``, of
        every tenant, and nothing else: the default tenant's, and any other's (which alone
        have a ``/`` in the hash tag)."""
        prefix = self._glob_prefix()
        return f"{prefix}:{{{model}:*}}:state", f"{prefix}:{{*/{model}:*}}:state"

    def parse_state_key(self, key: str) -> StreamId | None:
        """The stream a state key names; None if it is not one of this prefix's state keys."""
        head, tail = f"{self.prefix}:{{", "}:state"
        if not (key.startswith(head) and key.endswith(tail)):
            return None
        return _stream_id(key[len(head) : -len(tail)])

    def tenant_streams_key(self, tenant: str) -> str:
        """The set of a tenant's live streams (their state keys), kept for a tenant with a
        ``max_streams`` limit (``QUOTA_SCRIPT``)."""
        return f"{self.prefix}:{{{tenant}}}:streams"

    async def close(self) -> None:
        await self.clients.aclose()

    async def _connected(self) -> Redis | RedisCluster:
        """The client, created on first contact once we know whether Redis is a cluster."""
        return await self.clients.command_client()

    async def _call(self, operation: str, fn: Callable[[Redis | RedisCluster], Awaitable[T]]) -> T:
        start = time.perf_counter()
        try:
            return await fn(await self._connected())
        # OSError: a socket error redis-py did not wrap; RedisClusterException: no node of a
        # cluster could be reached, or a slot has none
        except (RedisError, OSError, RedisClusterException) as exc:
            self.metrics.redis_errors.labels(operation).inc()
            raise RedisUnavailable(
                f"Redis did not answer ({type(exc).__name__}); retry later"
            ) from exc
        finally:
            self.metrics.redis_seconds.labels(operation).observe(time.perf_counter() - start)

    async def ping(self) -> None:
        async def ping(client: Redis | RedisCluster) -> None:
            await client.ping()

        await self._call("ping", ping)

    async def load_many(self, keys: Sequence[str]) -> list[bytes | RedisUnavailable | None]:
        """Every record in one round trip per node; None where a stream has no state, and
        RedisUnavailable where (on a cluster) that stream's node failed while others answered."""
        if not keys:
            return []

        async def load(client: Redis | RedisCluster) -> list[bytes | RedisUnavailable | None]:
            if isinstance(client, Redis):
                return cast(list[bytes | RedisUnavailable | None], await client.mget(keys))
            replies = await self.clients.node_pipelines(client, [(k, ("GET", k)) for k in keys])
            return [
                self._node_failure("load", r) if isinstance(r, Exception) else r for r in replies
            ]

        return await self._call("load", load)

    def _node_failure(self, operation: str, error: Exception) -> RedisUnavailable:
        """One stream's failure on a cluster whose other nodes answered."""
        self.metrics.redis_errors.labels(operation).inc()
        return RedisUnavailable(
            f"Redis did not answer for this stream ({type(error).__name__}); retry later"
        )

    async def commit_many(
        self,
        writes: Sequence[Write],
        ttl_ms: int,
        policy: LogPolicy,
        now_ms: int,
        confirms: Sequence[Confirm] = (),
        announce: list[Announcement] | None = None,
    ) -> list[bool | int | ServiceError]:
        """Compare-and-set every record and append its events. Per write: True (written), False
        (the guard differed: someone else advanced or ended the stream), an int (a new
        generation that does not sort after the stream's log; the int is the log's last
        generation) or RedisUnavailable (on a cluster, that stream's node failed while others
        answered).

        With ``--durability`` aof or replicas:N, the writes are confirmed by WAITAOF or WAIT on
        their connection (``_commit_acked``): a write Redis applied but did not confirm in time
        is a NotPersisted or NotReplicated; ``confirms`` (duplicates' records) follow the
        writes in the result, each True (confirmed), False (the record changed since it was
        read) or an error; and the announcements of the confirmed writes are appended to
        ``announce``, for ``announce()`` (at the memory level the script announces them)."""
        if not writes and not confirms:
            return []
        head = [
            ttl_ms,
            policy.max_age_ms,
            policy.max_len,
            now_ms - policy.max_age_ms if policy.max_age_ms else 0,
            now_ms,
        ]
        if self._ack is not None:
            made: list[Announcement] = [] if announce is None else announce

            async def commit_acked(client: Redis | RedisCluster) -> list[bool | int | ServiceError]:
                return await self._commit_acked(client, writes, confirms, head, made)

            return await self._call("commit", commit_acked)

        async def commit(client: Redis | RedisCluster) -> list[bool | int | ServiceError]:
            if isinstance(client, Redis):
                try:
                    return [*await self._commit_standalone(client, writes, head)]
                except NoScriptError:
                    # Redis restarted and lost its script cache. The batch is one script call,
                    # and a refused call did not run: sending it again is safe.
                    self._commit_sha = await self._load_script(client)
                    return [*await self._commit_standalone(client, writes, head)]
            results = await self._commit_cluster(client, writes, head)
            refused = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if refused:
                # A node lost its script cache (restarted, or a replica took over). Only its
                # writes were refused, and they did not run; the others ran and must not be
                # sent again. The refused ones go again with the script itself, which its node
                # keeps for the next EVALSHA: no other node (one may be down) is involved.
                again = await self._commit_cluster(
                    client, [writes[i] for i in refused], head, with_script=True
                )
                for i, result in zip(refused, again, strict=True):
                    results[i] = result
            return [self._outcome(r) for r in results]

        return await self._call("commit", commit)

    def _outcome(self, result: object) -> bool | int | ServiceError:
        if isinstance(result, Exception):
            return self._node_failure("commit", result)
        return _written(cast(list[Any], result)[0])

    async def _script_sha(self, client: Redis | RedisCluster) -> str:
        if self._commit_sha is None:
            self._commit_sha = await self._load_script(client)
        return self._commit_sha

    @staticmethod
    async def _load_script(client: Redis | RedisCluster, script: str = COMMIT_SCRIPT) -> str:
        if isinstance(client, RedisCluster):
            shas = await client.execute_command(
                "SCRIPT LOAD", script, target_nodes=RedisCluster.PRIMARIES
            )
            sha = next(iter(shas.values())) if isinstance(shas, dict) else shas
        else:
            sha = await client.script_load(script)  # bytes, whatever the stubs say
        return _text(sha)

    async def _commit_standalone(
        self, client: Redis, writes: Sequence[Write], head: list[Any]
    ) -> list[bool | int]:
        sha = await self._script_sha(client)
        keys: list[str] = []
        for w in writes:
            keys += [w.keys.state, w.keys.log]
        out = await client.evalsha(sha, len(keys), *keys, *head, _pack_writes(writes, head[2]))
        return [_written(flag) for flag in out]

    async def _commit_cluster(
        self,
        client: RedisCluster,
        writes: Sequence[Write],
        head: list[Any],
        with_script: bool = False,
    ) -> list[Any]:
        """One script call per stream (its keys share a slot), one pipeline per node; per write
        its reply (``[1]``, ``[0]`` or ``[generation]``) or the exception its node answered.
        ``with_script``: send the script itself (EVAL) rather than its sha."""
        call = ("EVAL", COMMIT_SCRIPT) if with_script else ("EVALSHA", _COMMIT_SHA)
        return await self.clients.node_pipelines(
            client,
            [
                (
                    w.keys.state,
                    (*call, 2, w.keys.state, w.keys.log, *head, _pack_writes([w], head[2])),
                )
                for w in writes
            ],
        )

    # -- acknowledged writes (--durability aof, replicas:N) ----------------------------------

    async def _commit_acked(
        self,
        client: Redis | RedisCluster,
        writes: Sequence[Write],
        confirms: Sequence[Confirm],
        head: list[Any],
        announce: list[Announcement],
    ) -> list[bool | int | ServiceError]:
        """``commit_many`` with the writes' confirmation: one pipeline per node of the script
        call(s), the confirms, then WAITAOF or WAIT, all on one connection, so that the
        confirmation counts exactly these writes (a WAIT on another pooled connection would
        count that connection's writes, and confirm nothing of these)."""
        if isinstance(client, Redis):
            try:
                replies, ack = await self._acked_standalone(client, writes, confirms, head)
            except NoScriptError:
                # The script call was refused and did not run (the confirms and the WAIT did,
                # harmlessly): all of it again.
                self._commit_sha = await self._load_script(client)
                replies, ack = await self._acked_standalone(client, writes, confirms, head)
            unconfirmed = self._ack_error(ack)
            out: list[bool | int | ServiceError] = []
            if writes:
                flags, prevs = replies[0]
                for w, flag, prev in zip(writes, flags, prevs, strict=True):
                    out.append(self._acked(w, _written(flag), prev, unconfirmed, announce))
            for reply in replies[1 if writes else 0 :]:
                out.append(unconfirmed if reply == 1 and unconfirmed else reply == 1)
            return out
        return await self._acked_cluster(client, writes, confirms, head, announce)

    async def _acked_standalone(
        self, client: Redis, writes: Sequence[Write], confirms: Sequence[Confirm], head: list[Any]
    ) -> tuple[list[Any], Any]:
        """(the script's reply, if there are writes, then each confirm's), and the reply of the
        confirmation (an exception if Redis refused it). Raises what a script call raised."""
        sha = await self._script_sha(client)
        async with client.pipeline(transaction=False) as pipe:
            if writes:
                keys: list[str] = []
                for w in writes:
                    keys += [w.keys.state, w.keys.log]
                packed = _pack_writes(writes, head[2])
                # ARGV[7] = 1: announce nothing yet
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *head, packed, 1)
            for c in confirms:
                pipe.execute_command("EVAL", CONFIRM_SCRIPT, 1, c.key, c.guard)
            assert self._ack is not None
            pipe.execute_command(*self._ack)
            replies = list(await pipe.execute(raise_on_error=False))
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply
        return replies[:-1], replies[-1]

    async def _acked_cluster(
        self,
        client: RedisCluster,
        writes: Sequence[Write],
        confirms: Sequence[Confirm],
        head: list[Any],
        announce: list[Announcement],
    ) -> list[bool | int | ServiceError]:
        """One pipeline per node (redis-py sends each node's commands, in order, on one
        connection): every script call of the node's streams, then its WAITAOF or WAIT, sent to
        that node by name. A stream whose slot moved while it was written (the call was
        redirected to another node, off this connection) counts as unconfirmed."""
        sha = await self._script_sha(client)
        nodes: dict[str, Any] = {}
        owners: list[str] = []
        keys = [w.keys.state for w in writes] + [c.key for c in confirms]
        async with client.pipeline() as pipe:
            for w in writes:
                packed = _pack_writes([w], head[2])
                pipe.execute_command("EVALSHA", sha, 2, w.keys.state, w.keys.log, *head, packed, 1)
            for c in confirms:
                pipe.execute_command("EVAL", CONFIRM_SCRIPT, 1, c.key, c.guard)
            for key in keys:
                node = client.get_node_from_key(key)
                if node is None:
                    raise RedisError(f"no cluster node serves key {key}")
                nodes.setdefault(node.name, node)
                owners.append(node.name)
            for node in nodes.values():
                pipe.execute_command(*self._ack_command(), target_nodes=node)
            replies = list(await pipe.execute(raise_on_error=False))
        node_replies = zip(nodes, replies[len(keys) :], strict=True)
        acks = {name: self._ack_error(reply) for name, reply in node_replies}
        out: list[bool | int | ServiceError] = []
        refused: list[int] = []
        for i, (key, owner) in enumerate(zip(keys, owners, strict=True)):
            reply = replies[i]
            moved = client.get_node_from_key(key)
            unconfirmed = acks[owner]
            if unconfirmed is None and (moved is None or moved.name != owner):
                unconfirmed = self._unacknowledged("the stream's slot moved while it was written")
            if isinstance(reply, NoScriptError):
                refused.append(i)
                out.append(False)
            elif isinstance(reply, Exception):
                out.append(self._outcome(reply))
            elif i < len(writes):
                flags, prevs = reply
                written = _written(flags[0])
                out.append(self._acked(writes[i], written, prevs[0], unconfirmed, announce))
            else:
                out.append(unconfirmed if reply == 1 and unconfirmed else reply == 1)
        if refused:
            # A node lost its script cache: its script calls were refused and did not run;
            # they go again, with a confirmation of their own.
            self._commit_sha = await self._load_script(client)
            again = await self._acked_cluster(
                client, [writes[i] for i in refused], (), head, announce
            )
            for i, result in zip(refused, again, strict=True):
                out[i] = result
        return out

    def _ack_command(self) -> tuple[Any, ...]:
        assert self._ack is not None
        return self._ack

    def _acked(
        self,
        write: Write,
        written: bool | int,
        prev: bytes | str,
        unconfirmed: ServiceError | None,
        announce: list[Announcement],
    ) -> bool | int | ServiceError:
        """A write's outcome once its confirmation is known; a confirmed write's announcement
        joins ``announce``."""
        if written is not True:
            return written
        if unconfirmed is not None:
            return unconfirmed
        new_stream = b""
        if not write.expected_guard:  # as COMMIT_SCRIPT announces a new generation
            new_stream = f"{write.keys.state}\n{write.log.floor}".encode()
        message = _text(prev).encode() + b"\n" + write.log.message
        announce.append(Announcement(write.keys.state, write.keys.channel, message, new_stream))
        return True

    def _ack_error(self, reply: Any, write: bool = True) -> ServiceError | None:
        """None when the reply of WAIT or WAITAOF confirms what went before it on its
        connection, else the error for the readings it answers (``write``) or for a reader of
        the event log."""
        timeout = self.durability_timeout_ms
        why: str | None = None
        if isinstance(reply, ResponseError):
            why = f"Redis refused to confirm it: {reply}"
        elif isinstance(reply, Exception):
            why = f"the confirmation failed ({type(reply).__name__})"
        elif self.durability.level == "aof":
            if int(reply[0]) < 1:
                why = f"Redis did not confirm it in its append-only file within {timeout} ms"
        elif int(reply) < self.durability.replicas:
            why = (
                f"{int(reply)} of the {self.durability.replicas} replica(s) asked for confirmed "
                f"it within {timeout} ms"
            )
        if why is None:
            return None
        if write:
            return self._unacknowledged(why)
        text = (
            f"the stream's event log holds events not yet acknowledged at --durability "
            f"{self.durability}: {why}"
        )
        return NotPersisted(text) if self.durability.level == "aof" else NotReplicated(text)

    def _unacknowledged(self, why: str) -> ServiceError:
        text = (
            f"the write was applied but not acknowledged at --durability {self.durability}: "
            f"{why}; retry with the same seq (a retry is answered as a duplicate once the write "
            "is confirmed, or applied afresh if it was lost)"
        )
        return NotPersisted(text) if self.durability.level == "aof" else NotReplicated(text)

    async def announce(self, announcements: Sequence[Announcement]) -> None:
        """Announce acknowledged writes (``commit_many`` with ``announce``), as the commit
        script does at the memory level: one script call (one per stream on a cluster)."""
        if not announcements:
            return
        channel = self.new_streams_channel

        async def run(client: Redis | RedisCluster) -> None:
            if isinstance(client, Redis):
                blob = _pack_announcements(announcements)
                if self._announce_sha is None:
                    self._announce_sha = await self._load_script(client, ANNOUNCE_SCRIPT)
                try:
                    await client.evalsha(self._announce_sha, 0, channel, blob)
                except NoScriptError:
                    self._announce_sha = await self._load_script(client, ANNOUNCE_SCRIPT)
                    await client.evalsha(self._announce_sha, 0, channel, blob)
                return
            async with client.pipeline() as pipe:
                for a in announcements:
                    pipe.execute_command(
                        "EVAL", ANNOUNCE_SCRIPT, 1, a.key, channel, _pack_announcements([a])
                    )
                for reply in await pipe.execute(raise_on_error=False):
                    if isinstance(reply, Exception):
                        raise reply

        await self._call("announce", run)

    async def check_durability(self) -> str | None:
        """At start-up: raises DurabilityError when Redis cannot give the ``--durability``
        level (aof: a server without WAITAOF, older than 7.2, or with its append-only file
        off), returns a warning when it cannot yet (replicas:N: fewer replicas connected), and
        raises RedisUnavailable when Redis does not answer. Every primary of a cluster."""
        if self._ack is None:
            return None

        async def check(client: Redis | RedisCluster) -> str | None:
            targets: list[tuple[str, dict[str, Any]]] = [("Redis", {})]
            if isinstance(client, RedisCluster):
                targets = [(f"node {n.name}", {"target_nodes": n}) for n in client.get_primaries()]
            warnings = []
            for name, where in targets:
                if self.durability.level == "aof":
                    server = await client.info("server", **where)
                    version = str(server.get("redis_version", "0"))
                    numbers = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
                    if numbers < (7, 2):
                        raise DurabilityError(
                            f"--durability aof needs WAITAOF (Redis or Valkey 7.2 or newer), and "
                            f"{name} is Redis {version}: upgrade it, or choose another "
                            "--durability"
                        )
                    persistence = await client.info("persistence", **where)
                    if str(persistence.get("aof_enabled", "0")) != "1":
                        raise DurabilityError(
                            f"--durability aof needs Redis's append-only file, and {name} has "
                            "appendonly no: turn it on (appendonly yes in its configuration, or "
                            "CONFIG SET appendonly yes), or choose another --durability"
                        )
                else:
                    replication = await client.info("replication", **where)
                    connected = int(replication.get("connected_slaves", 0))
                    if connected < self.durability.replicas:
                        warnings.append(
                            f"{name} has {connected} replica(s) connected and --durability "
                            f"{self.durability} asks for {self.durability.replicas}: readings "
                            "are answered 503 not_replicated until enough replicas confirm them"
                        )
            return "; ".join(warnings) or None

        return await self._call("ping", check)

    async def read_log(
        self, log_key: str, after: str, count: int, max_age_ms: int = 0, now_ms: int | None = None
    ) -> LogChunk:
        """The entries after id ``after`` ("": from the start) holding about ``count`` events
        (whole entries: up to one entry's more), with the log's bounds. With ``max_age_ms``, the
        entries older than that (at ``now_ms``, by default this process's clock) count as
        deleted. The first entry may hold events at or below ``after`` or ``deleted_id``:
        ``events.log_events`` drops them."""
        cutoff = 0
        if max_age_ms > 0:
            cutoff = (int(time.time() * 1000) if now_ms is None else now_ms) - max_age_ms

        async def read(client: Redis | RedisCluster) -> LogChunk:
            if self._ack is None or count == 0:
                reply = await client.eval(LOG_SCRIPT, 1, log_key, after, count, cutoff)
            else:
                reply = await self._acked_read(client, log_key, [after, count, cutoff, 1])
            if not reply[0]:
                return LogChunk(False, "", "0-0", [])
            entries = [
                (_text(entry_id), dict(zip(fields[::2], fields[1::2], strict=True)))
                for entry_id, fields in reply[3]
            ]
            return LogChunk(True, _text(reply[1]), _text(reply[2]), entries, bool(reply[4]))

        return await self._call("read_log", read)

    async def _acked_read(
        self, client: Redis | RedisCluster, log_key: str, args: list[Any]
    ) -> list[Any]:
        """LOG_SCRIPT's reply once its entries are acknowledged at the --durability level (the
        script call and WAITAOF or WAIT in one pipeline, on one connection); raises NotPersisted
        or NotReplicated when they are not (the reader's client resumes later)."""
        pipe = (
            client.pipeline(transaction=False) if isinstance(client, Redis) else client.pipeline()
        )
        async with pipe:
            pipe.execute_command("EVAL", LOG_SCRIPT, 1, log_key, *args)
            target: dict[str, Any] = {}
            if isinstance(client, RedisCluster):
                node = client.get_node_from_key(log_key)
                if node is None:
                    raise RedisError(f"no cluster node serves key {log_key}")
                target["target_nodes"] = node
            pipe.execute_command(*self._ack_command(), **target)
            reply, ack = await pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        if reply[0] and reply[3]:
            unconfirmed = self._ack_error(ack, write=False)
            if unconfirmed is not None:
                raise unconfirmed
        return cast(list[Any], reply)

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """A record and its remaining TTL in ms (-1: none) in one round trip."""

        async def get_with_ttl(client: Redis | RedisCluster) -> tuple[bytes | None, int]:
            if isinstance(client, RedisCluster):
                raw, pttl = await self.clients.node_pipelines(
                    client, [(key, ("GET", key)), (key, ("PTTL", key))]
                )
                for reply in (raw, pttl):
                    if isinstance(reply, Exception):
                        raise reply
            else:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.get(key)
                    pipe.pttl(key)
                    raw, pttl = await pipe.execute()
            return raw, int(pttl)

        return await self._call("get", get_with_ttl)

    async def subscriber_client(self, channel: str) -> tuple[str, Redis]:
        """A new client of its own for subscribing to ``channel``, and the name of the node it
        talks to ("" unless on a cluster). Its commands wait ``timeout_s`` (its reader gives
        reads a timeout of their own); a failure is raised, not retried, so that the caller knows
        announcements may have been lost."""

        async def connect(client: Redis | RedisCluster) -> tuple[str, Redis]:
            return await self.clients.dedicated(channel)

        return await self._call("connect", connect)

    async def channel_nodes(self, channels: Iterable[str]) -> dict[str, str]:
        """The node now serving each channel ("" unless on a cluster), from the cluster's slot
        map read anew: after a node failed, a replica may serve its channels."""

        async def owners(client: Redis | RedisCluster) -> dict[str, str]:
            return await self.clients.owners(channels)

        return await self._call("connect", owners)

    # -- stream discovery, for prefix subscriptions ------------------------------------------

    @property
    def new_streams_channel(self) -> str:
        """The plain channel COMMIT_SCRIPT announces every new stream generation on."""
        return f"{self.prefix}:new-streams"

    def parse_new_stream(self, message: bytes) -> tuple[StreamId, str] | None:
        """(the stream, its floor id) from a new-streams message; None if it is not one."""
        key, _, floor = message.decode("utf-8", "replace").partition("\n")
        stream = self.parse_state_key(key)
        return None if stream is None else (stream, floor)

    async def scan_streams(
        self, tenant: str, model: str, stream_prefix: str, limit: int
    ) -> list[str]:
        """Streams of ``tenant`` and ``model`` whose id starts with ``stream_prefix`` that have
        state or an event log, found with SCAN on every primary; at most ``limit + 1`` of them,
        so a caller can tell that there are more than ``limit``."""
        namespace = self._namespace(tenant)
        pattern = f"{self._glob_prefix()}:{{{namespace}{model}:{stream_prefix}*}}:*"
        head = f"{self.prefix}:{{{namespace}{model}:"

        async def scan(client: Redis | RedisCluster) -> list[str]:
            found: set[str] = set()
            nodes: list[Any] = [None]
            if isinstance(client, RedisCluster):
                nodes = list(client.get_primaries())
            for node in nodes:
                cursor = 0
                while len(found) <= limit:
                    if isinstance(client, RedisCluster):
                        reply = await client.execute_command(
                            "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, target_nodes=node
                        )
                        # redis-py gives the cursor per node: ({node: cursor}, keys)
                        cursors, keys = reply
                        cursor = int(next(iter(cursors.values())))
                    else:
                        cursor, keys = await client.scan(cursor, match=pattern, count=1000)
                    for raw in keys:
                        stream, _, suffix = _text(raw)[len(head) :].rpartition("}:")
                        if suffix in ("state", "events"):
                            found.add(stream)
                    if not cursor:
                        break
            return sorted(found)[: limit + 1]

        return await self._call("scan", scan)

    async def _each(
        self, client: Redis | RedisCluster, commands: Sequence[tuple[str, tuple[Any, ...]]]
    ) -> list[Any]:
        """Independent ``(key, command)``s in one round trip (one per node on a cluster, where a
        failed node fails only its own: ``RedisClients.node_pipelines``); raises the first
        error."""
        if isinstance(client, Redis):
            async with client.pipeline(transaction=False) as pipe:
                for _, command in commands:
                    pipe.execute_command(*command)
                return list(await pipe.execute())
        replies = await self.clients.node_pipelines(client, commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def delete(self, key: str, tenant: str | None = None) -> bool:
        """Remove a stream's record; whether it had one. With ``tenant``, the stream also leaves
        that tenant's set of live streams, in the same round trip (per node)."""

        async def delete(client: Redis | RedisCluster) -> bool:
            if tenant is None:
                return bool(await client.delete(key))
            streams = self.tenant_streams_key(tenant)
            deleted, _ = await self._each(
                client, [(key, ("DEL", key)), (streams, ("SREM", streams, key))]
            )
            return bool(deleted)

        return await self._call("delete", delete)

    # -- live streams per tenant (max_streams; QUOTA_SCRIPT) ----------------------------------

    async def admit_streams(self, asks: Mapping[str, tuple[int, Sequence[str]]]) -> set[str]:
        """Count streams that start a generation against their tenant's limit: ``asks`` maps a
        tenant to (its limit, the state keys of its streams starting one). One script call per
        tenant, all in one round trip (per node). Returns the keys refused."""

        async def admit(client: Redis | RedisCluster) -> list[Any]:
            calls = []
            for tenant, (limit, keys) in asks.items():
                streams = self.tenant_streams_key(tenant)
                calls.append((streams, ("EVAL", QUOTA_SCRIPT, 1, streams, limit, *keys)))
            return await self._each(client, calls)

        replies = await self._call("quota", admit)
        refused: set[str] = set()
        for (_, keys), flags in zip(asks.values(), replies, strict=True):
            refused.update(key for key, flag in zip(keys, flags, strict=True) if not flag)
        return refused

    async def release_streams(self, keys: Mapping[str, Sequence[str]]) -> None:
        """Take ended or expired streams out of their tenant's set: ``keys`` maps a tenant to
        state keys. One SREM per tenant, in one round trip (per node)."""
        if not keys:
            return

        async def release(client: Redis | RedisCluster) -> None:
            calls = []
            for tenant, members in keys.items():
                streams = self.tenant_streams_key(tenant)
                calls.append((streams, ("SREM", streams, *members)))
            await self._each(client, calls)

        await self._call("quota", release)

    async def prune_streams(self, tenant: str) -> int:
        """Drop from a tenant's set the streams whose state key no longer exists (the repair
        said above ``QUOTA_SCRIPT``); how many were dropped."""
        key = self.tenant_streams_key(tenant)

        async def prune(client: Redis | RedisCluster) -> int:
            members = [_text(m) for m in await client.smembers(key)]
            if not members:
                return 0
            if isinstance(client, Redis):
                return int(await client.eval(PRUNE_SCRIPT, 1 + len(members), key, *members))
            # A cluster: the members live in other slots than the set, so no script sees both.
            found = await self._each(client, [(m, ("EXISTS", m)) for m in members])
            gone = [m for m, n in zip(members, found, strict=True) if not n]
            return int(await client.srem(key, *gone)) if gone else 0

        return await self._call("quota", prune)


def _stream_id(tag: str) -> StreamId | None:
    """The stream named by a hash tag's content: ``model:stream`` (the default tenant) or
    ``tenant/model:stream``."""
    tenant, slash, rest = tag.partition("/")
    if not slash:
        tenant, rest = DEFAULT_TENANT, tag
    elif tenant == DEFAULT_TENANT or "/" in rest:
        return None  # the default tenant's keys have no namespace
    model, sep, stream = rest.partition(":")  # models have no ":"
    return StreamId(tenant, model, stream) if sep and model and stream else None


class DurabilityError(RuntimeError):
    """At start-up: Redis cannot give the ``--durability`` level asked for (one line why)."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _written(flag: int | bytes) -> bool | int:
    """A script reply per stream: 1 written, 0 lost the race, or the log's last generation."""
    if isinstance(flag, bytes):
        return int(flag)
    return bool(flag)


_U32 = struct.Struct("<I")


def _pack_writes(writes: Sequence[Write], max_len: int) -> bytes:
    """Every write's script arguments as one string (the layout: ``COMMIT_SCRIPT``)."""
    parts: list[bytes] = []
    add = parts.append
    u32 = _U32.pack
    k = max(1, max_len // 10)  # as the script's k
    for w in writes:
        log = w.log
        for text in (
            w.expected_guard,
            w.record,
            w.keys.channel.encode(),
            log.prev.encode(),
            log.floor.encode(),
            log.first.encode(),
            log.last.encode(),
            log.message,
        ):
            add(u32(len(text)))
            add(text)
        before, last = log.seqs
        add(b"\x01" if before // k != last // k else b"\x00")
    return b"".join(parts)


def _pack_announcements(announcements: Sequence[Announcement]) -> bytes:
    """Announcements as ANNOUNCE_SCRIPT's ARGV[2]."""
    parts: list[bytes] = []
    add = parts.append
    u32 = _U32.pack
    for a in announcements:
        for text in (a.channel.encode(), a.message, a.new_stream):
            add(u32(len(text)))
            add(text)
    return b"".join(parts)
