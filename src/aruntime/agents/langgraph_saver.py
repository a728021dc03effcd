"""LangGraph checkpoints kept in the run journal's database.

`JournalSaver` is a LangGraph `BaseCheckpointSaver` over any `SqlJournal`, so a LangGraph agent's
threads live beside the journal's runs, on the embedded SQLite file or the shared PostgreSQL. It
speaks only through `journal.execute`, `execute_all` and `query`, with one SQL text for both
backends: serde blobs are base64 TEXT (SQLite's BLOB and PostgreSQL's BYTEA share no type
name), metadata is JSON text, and metadata filters run here (`json_extract` and `jsonb` share no
syntax).

A call that touches both tables (delete, copy, prune) is one transaction: a checkpoint is never
seen without its pending writes. Every statement is idempotent, so repeating a call is safe.

Import this module only where LangGraph is wanted: it imports `langgraph.checkpoint`.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from aruntime.durable.journal import SqlJournal

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lg_checkpoints (
        thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL, checkpoint_id TEXT NOT NULL,
        parent_checkpoint_id TEXT, run_id TEXT, type TEXT NOT NULL, checkpoint TEXT NOT NULL,
        metadata TEXT NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id))""",
    "CREATE INDEX IF NOT EXISTS lg_checkpoints_run ON lg_checkpoints (run_id)",
    """CREATE TABLE IF NOT EXISTS lg_writes (
        thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL, checkpoint_id TEXT NOT NULL,
        task_id TEXT NOT NULL, idx INTEGER NOT NULL, task_path TEXT NOT NULL,
        channel TEXT NOT NULL, type TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx))""",
)

_CHECKPOINT_COLS = ("thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, "
                    "type, checkpoint, metadata")
_WRITE_COLS = "checkpoint_ns, checkpoint_id, task_id, idx, task_path, channel, type, value"
# checkpoint ids are uuid6 text, later ids sorting higher; all share one shape, so SQLite's
# binary collation and any PostgreSQL locale order them alike
_NEWEST_FIRST = "ORDER BY checkpoint_id DESC, thread_id, checkpoint_ns"


def _config(thread_id: Any, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                             "checkpoint_id": checkpoint_id}}


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class JournalSaver(BaseCheckpointSaver[int]):
    """A LangGraph checkpointer whose threads are rows of the journal's database (tables
    `lg_checkpoints` and `lg_writes`, created on first use)."""

    def __init__(self, journal: SqlJournal, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self.journal = journal
        journal.create_schema(SCHEMA)  # serialised across processes where the backend must be

    # -- encoding

    def _dump(self, value: Any) -> tuple[str, str]:
        type_, data = self.serde.dumps_typed(value)
        return type_, base64.b64encode(data).decode("ascii")

    def _load(self, type_: str, text: str) -> Any:
        return self.serde.loads_typed((type_, base64.b64decode(text)))

    def _tuple(self, row: Sequence[Any]) -> CheckpointTuple:
        thread_id, ns, checkpoint_id, parent_id, _run_id, type_, blob, metadata = row
        return CheckpointTuple(
            _config(thread_id, ns, checkpoint_id), self._load(type_, blob), json.loads(metadata),
            _config(thread_id, ns, parent_id) if parent_id else None,
            self._pending_writes(thread_id, ns, checkpoint_id))

    def _pending_writes(self, thread_id: str, ns: str,
                        checkpoint_id: str) -> builtins.list[PendingWrite]:
        rows = self.journal.query(
            "SELECT task_id, channel, type, value, task_path, idx FROM lg_writes "
            "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
            (thread_id, ns, checkpoint_id))
        # sorted here, not by ORDER BY: PostgreSQL would sort task paths by its locale
        rows.sort(key=lambda r: writes_sort_key(r[4], r[0], int(r[5])))
        return [(task_id, channel, self._load(type_, value))
                for task_id, channel, type_, value, _, _ in rows]

    # -- reads

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        where, params = "thread_id = ? AND checkpoint_ns = ?", [str(conf["thread_id"]),
                                                                 conf.get("checkpoint_ns", "")]
        if checkpoint_id := get_checkpoint_id(config):
            where, params = f"{where} AND checkpoint_id = ?", [*params, checkpoint_id]
        rows = self.journal.query(f"SELECT {_CHECKPOINT_COLS} FROM lg_checkpoints WHERE {where} "
                                  f"{_NEWEST_FIRST} LIMIT 1", params)
        return self._tuple(rows[0]) if rows else None

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None,
             limit: int | None = None) -> Iterator[CheckpointTuple]:
        wheres: builtins.list[str] = []
        params: builtins.list[Any] = []
        if config is not None:
            conf = config["configurable"]
            for column, value in (("thread_id", conf.get("thread_id")),
                                  ("checkpoint_ns", conf.get("checkpoint_ns")),
                                  ("checkpoint_id", get_checkpoint_id(config))):
                if value is not None:
                    wheres.append(f"{column} = ?")
                    params.append(str(value))
        if before is not None and (before_id := get_checkpoint_id(before)):
            wheres.append("checkpoint_id < ?")
            params.append(before_id)
        where = f"WHERE {' AND '.join(wheres)}" if wheres else ""
        sql = f"SELECT {_CHECKPOINT_COLS} FROM lg_checkpoints {where} {_NEWEST_FIRST}"
        if limit is not None and not filter:
            sql, params = f"{sql} LIMIT ?", [*params, limit]
        wanted = json.loads(json.dumps(filter)) if filter else {}  # tuples compare as JSON lists
        left = limit
        for row in self.journal.query(sql, params):
            if wanted:
                metadata = json.loads(row[7])
                if any(metadata.get(k) != v for k, v in wanted.items()):
                    continue
            if left is not None:
                if left <= 0:
                    return
                left -= 1
            yield self._tuple(row)

    # -- writes

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        # the whole checkpoint is one blob, so `new_versions` (which blobs changed) is not needed
        conf = config["configurable"]
        ns = conf.get("checkpoint_ns", "")
        meta = get_serializable_checkpoint_metadata(config, metadata)
        run_id = meta.get("run_id")
        self.journal.execute(
            f"INSERT INTO lg_checkpoints ({_CHECKPOINT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET "
            "parent_checkpoint_id = excluded.parent_checkpoint_id, run_id = excluded.run_id, "
            "type = excluded.type, checkpoint = excluded.checkpoint, metadata = excluded.metadata",
            (str(conf["thread_id"]), ns, checkpoint["id"], conf.get("checkpoint_id"),
             None if run_id is None else str(run_id), *self._dump(checkpoint),
             json.dumps(meta, ensure_ascii=False)))
        return _config(conf["thread_id"], ns, checkpoint["id"])

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        """One statement for all of a task's writes: LangGraph counts a task with any stored
        write as done, so a partial set would lose the rest on resume."""
        if not writes:
            return
        conf = config["configurable"]
        key = (str(conf["thread_id"]), conf.get("checkpoint_ns", ""), str(conf["checkpoint_id"]))
        # special channels (error, interrupt, resume) sit at fixed negative idx and are replaced
        # when recorded again; a task's ordinary writes are recorded once
        special = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        rows: dict[int, tuple[Any, ...]] = {}
        for idx, (channel, value) in enumerate(writes):
            at = WRITES_IDX_MAP.get(channel, idx)
            row = (*key, task_id, at, task_path, channel, *self._dump(value))
            if special or at not in rows:  # one row per key: PostgreSQL refuses two in a statement
                rows[at] = row
        on_conflict = ("DO UPDATE SET task_path = excluded.task_path, channel = excluded.channel, "
                       "type = excluded.type, value = excluded.value" if special else "DO NOTHING")
        values = ", ".join([f"(?, {_marks(8)})"] * len(rows))
        self.journal.execute(
            f"INSERT INTO lg_writes (thread_id, {_WRITE_COLS}) VALUES {values} "
            f"ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) {on_conflict}",
            [p for row in rows.values() for p in row])

    # -- deletion, copying, pruning

    def delete_thread(self, thread_id: str) -> None:
        self.journal.execute_all([(f"DELETE FROM {table} WHERE thread_id = ?", (str(thread_id),))
                                  for table in ("lg_writes", "lg_checkpoints")])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Drop the checkpoints the runs wrote, with their pending writes."""
        if not run_ids:
            return
        ids = [str(r) for r in run_ids]
        self.journal.execute_all([
            (("DELETE FROM lg_writes WHERE EXISTS (SELECT 1 FROM lg_checkpoints c WHERE "
              f"c.run_id IN ({_marks(len(ids))}) AND c.thread_id = lg_writes.thread_id AND "
              "c.checkpoint_ns = lg_writes.checkpoint_ns AND "
              "c.checkpoint_id = lg_writes.checkpoint_id)"), ids),
            (f"DELETE FROM lg_checkpoints WHERE run_id IN ({_marks(len(ids))})", ids)])

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint (the whole parent chain, as delta channels need) and write."""
        params = (str(target_thread_id), str(source_thread_id))
        rest = _CHECKPOINT_COLS.removeprefix("thread_id, ")
        self.journal.execute_all([
            ((f"INSERT INTO lg_writes (thread_id, {_WRITE_COLS}) SELECT CAST(? AS TEXT), "
              f"{_WRITE_COLS} FROM lg_writes WHERE thread_id = ? ON CONFLICT DO NOTHING"), params),
            ((f"INSERT INTO lg_checkpoints ({_CHECKPOINT_COLS}) SELECT CAST(? AS TEXT), {rest} "
              "FROM lg_checkpoints WHERE thread_id = ? ON CONFLICT DO NOTHING"), params)])

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`keep_latest` keeps each namespace's newest checkpoint and the ancestors its delta
        channels replay from; `delete` drops the threads."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}")
        for thread_id in map(str, thread_ids):
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            for (ns,) in self.journal.query(
                    "SELECT DISTINCT checkpoint_ns FROM lg_checkpoints WHERE thread_id = ?",
                    (thread_id,)):
                if not (keep := self._replay_chain(thread_id, ns)):
                    continue
                where = (f"thread_id = ? AND checkpoint_ns = ? AND checkpoint_id NOT IN "
                         f"({_marks(len(keep))})")
                self.journal.execute_all([(f"DELETE FROM {table} WHERE {where}",
                                           (thread_id, ns, *keep))
                                          for table in ("lg_writes", "lg_checkpoints")])

    def _replay_chain(self, thread_id: str, ns: str) -> builtins.list[str]:
        """The newest checkpoint and its ancestors back to the nearest one holding a value for
        each delta channel it lacks. A `DeltaChannel` stores a snapshot only every so often and
        is rebuilt by replaying the writes since; `counters_since_delta_snapshot` names those
        channels not snapshotted at the head."""
        links = {cid: (parent, meta) for cid, parent, meta in self.journal.query(
            "SELECT checkpoint_id, parent_checkpoint_id, metadata FROM lg_checkpoints "
            "WHERE thread_id = ? AND checkpoint_ns = ?", (thread_id, ns))}
        if not links:  # deleted since the namespace was listed
            return []
        head = max(links)
        chain = [head]
        lacking = set(json.loads(links[head][1]).get("counters_since_delta_snapshot") or ())
        while lacking:
            [(type_, blob)] = self.journal.query(
                "SELECT type, checkpoint FROM lg_checkpoints WHERE thread_id = ? AND "
                "checkpoint_ns = ? AND checkpoint_id = ?", (thread_id, ns, chain[-1]))
            lacking -= set(self._load(type_, blob)["channel_values"])
            parent = links[chain[-1]][0]
            if not lacking or parent not in links or parent in chain:
                break
            chain.append(parent)
        return chain

    # -- async: the journal is synchronous, so each call runs on a worker thread

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *,
                    filter: dict[str, Any] | None = None, before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        items = await asyncio.to_thread(
            lambda: [*self.list(config, filter=filter, before=before, limit=limit)])
        for item in items:
            yield item

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)
