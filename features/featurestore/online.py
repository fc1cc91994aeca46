"""The online store: the latest feature row per customer_key, for serving.

Two backends behind one interface: SQLite (the embedded default, a file under home)
and Redis (when `CUSTINTEL_REDIS_URL` is set). Each stores, per customer and feature
set, the same JSON document, made once by DuckDB from the offline rows, so both
backends return identical answers. Materialising a set replaces it whole: customers
no longer in the set (churned) disappear from it.

This module owns the documents' format, both ways: `online_documents` and `set_layout`
write a set's documents and the metadata describing them; `OnlineStore.merged` and
`OnlineStore.merged_many` read a customer's documents back as one row of features (the
sets merged, the newest cutoff under `AS_OF`), the latter for many customers in one round
trip and one parse, with `set_view` choosing the sets a model's inputs are in.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

_BATCH = 20_000
_SQLITE_LAYOUT = 2  # PRAGMA user_version of the SQLite store's layout
AS_OF = "_as_of"  # a merged row's key for the stored features' newest cutoff (not a feature)
_CUTOFF_FIRST = '{"as_of":"'  # how `online_documents` starts a document: its cutoff first


class OnlineStoreError(RuntimeError):
    """The online store cannot be used for what was asked."""


class OnlineStoreUnavailable(OnlineStoreError, ConnectionError):
    """The online store's server cannot be reached (an I/O failure: worth a retry)."""


def online_documents(table: pa.Table, grouped: bool = False) -> Iterator[tuple[str, str]]:
    """(customer_key, JSON document) pairs for one cutoff's rows of a set.

    A document holds the set's features and its `as_of`. With `grouped`, the rows of a
    customer (e.g. one per product) become one list under `items`.
    """
    cols = [c for c in table.column_names if c not in ("customer_key", "as_of")]
    pack = ", ".join(f'"{c}" := "{c}"' for c in cols)
    if grouped:
        sql = (
            f"SELECT customer_key, to_json(struct_pack(as_of := CAST(max(as_of) AS VARCHAR), "
            f"items := list(struct_pack({pack})))) FROM t GROUP BY customer_key ORDER BY customer_key"
        )
    else:
        sql = (
            f"SELECT customer_key, to_json(struct_pack(as_of := CAST(as_of AS VARCHAR), {pack})) "
            "FROM t ORDER BY customer_key"
        )
    with duckdb.connect() as con:
        con.register("t", table)
        reader = con.sql(sql).to_arrow_reader(batch_size=_BATCH)
        for batch in reader:
            keys = batch.column(0).to_pylist()
            docs = batch.column(1).to_pylist()
            yield from zip(keys, docs, strict=True)


def set_layout(table: pa.Table, grouped: bool) -> dict[str, Any]:
    """What a set's online documents hold: their keys besides `as_of`, the numeric ones, whether grouped.

    A grouped set's documents hold one key, `items` (a list of rows with `item_columns`).
    Stored as the set's metadata, it lets a reader fetch only the sets it needs (`set_view`).
    """
    fields = [f for f in table.schema if f.name not in ("customer_key", "as_of")]
    if grouped:
        return {"columns": ["items"], "numeric": [], "grouped": True, "item_columns": [f.name for f in fields]}
    numeric = [
        f.name
        for f in fields
        if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
        or pa.types.is_decimal(f.type)
    ]  # fmt: skip
    return {"columns": [f.name for f in fields], "numeric": numeric, "grouped": grouped}


@dataclass(frozen=True)
class SetView:
    """Which online sets a model reads, and what their documents promise.

    `set_keys`: the sets holding any of the model's inputs (None: every set, when the store does
    not record its sets' columns). `exact`: those sets are flat, share no column, and together
    hold exactly the model's inputs, so a customer's documents joined are the model's inputs
    as JSON. `numeric`: then, the inputs that are a JSON number or null in every document.
    """

    set_keys: tuple[str, ...] | None
    exact: bool = False
    numeric: frozenset[str] = frozenset()


def set_view(metas: dict[str, dict[str, Any]], inputs: Sequence[str]) -> SetView:
    """The sets a model with these inputs reads, from the sets' metadata (`OnlineStore.sets`, `set_layout`)."""
    if not metas or any(not isinstance(m.get("columns"), list) for m in metas.values()):
        return SetView(None)
    wanted = set(inputs)
    chosen = [k for k, m in sorted(metas.items()) if wanted & set(m["columns"])]
    columns = [c for k in chosen for c in metas[k]["columns"]]
    exact = (
        bool(chosen)
        and not any(metas[k].get("grouped") for k in chosen)
        and len(columns) == len(set(columns)) == len(wanted)
        and set(columns) == wanted
    )
    numeric = frozenset(c for k in chosen for c in metas[k].get("numeric", ())) if exact else frozenset()
    return SetView(tuple(chosen), exact, numeric)


@dataclass
class StoredFeatures:
    """Many customers' stored features as a model reads them (`OnlineStore.merged_many`).

    `rows`: per customer found, the documents merged (a later set's value wins) with the
    newest cutoff under AS_OF. `texts`: per customer whose documents hold exactly the model's
    inputs (`SetView.exact`, every chosen set present), those inputs as JSON text.
    """

    rows: dict[str, dict[str, Any]]
    texts: dict[str, str] = field(default_factory=dict)
    view: SetView | None = None


def merge_documents(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One customer's parsed documents (by set key, in set-key order) as one row: a later set's value wins.

    The documents' `as_of` become one key, AS_OF, holding the newest of them.
    """
    merged: dict[str, Any] = {}
    cutoffs = []
    for doc in docs.values():
        merged.update(doc)
        if doc.get("as_of"):
            cutoffs.append(str(doc["as_of"]))
    merged.pop("as_of", None)
    if cutoffs:
        merged[AS_OF] = max(cutoffs)
    return merged


def parse_documents(found: dict[str, list[str]], view: SetView | None = None) -> StoredFeatures:
    """`merge_documents` of many customers' raw JSON documents (each customer's in set-key order), in one parse.

    `online_documents` writes each document as a flat object with its cutoff first, so a
    customer's document bodies after their cutoffs, joined into one object, are their features
    merged (a later key wins when parsed, as in `dict.update`), and each cutoff is read off its
    document's start; all customers' objects then parse as one JSON array. Anything else is
    parsed document by document. Values JSON has no word for (NaN, infinities) are read as Python's
    `json` reads them.
    """
    texts, cutoffs = [], []
    for docs in found.values():
        parts, newest = [], ""
        for doc in docs:
            end = doc.find('"', 10)
            if not doc.startswith(_CUTOFF_FIRST) or doc[-1] != "}" or end <= 10 or "\\" in doc[10:end]:
                return _parse_one_by_one(found)
            after = doc[end + 1]
            if after == ",":
                parts.append(doc[end + 2 : -1])
            elif after != "}":
                return _parse_one_by_one(found)
            cutoff = doc[10:end]
            if cutoff > newest:
                newest = cutoff
        texts.append("{" + ",".join(parts) + "}")
        cutoffs.append(newest)
    parsed: list[dict[str, Any]] = _loads("[" + ",".join(texts) + "]")
    rows = {}
    for key, row, cutoff in zip(found, parsed, cutoffs, strict=True):
        row[AS_OF] = cutoff
        rows[key] = row
    kept: dict[str, str] = {}
    if view is not None and view.exact and view.set_keys is not None:
        complete = len(view.set_keys)
        kept = {k: t for (k, docs), t in zip(found.items(), texts, strict=True) if len(docs) == complete}
    return StoredFeatures(rows, kept, view)


def _parse_one_by_one(found: dict[str, list[str]]) -> StoredFeatures:
    return StoredFeatures({k: merge_documents({str(i): _loads(d) for i, d in enumerate(v)}) for k, v in found.items()})


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN and infinities, which orjson refuses


def _with_erasures(token: str, meta: str | bytes) -> str:
    """A set's state token, moved on by each erasure from it (`delete_customers`)."""
    erasures = orjson.loads(meta).get("erasures")
    return f"{token}#erased{erasures}" if erasures else token


def _token_base(token: str) -> str:
    """The table (SQLite) or generation (Redis) a state token names, without its erasures."""
    return token.split("#erased", 1)[0]


class OnlineStore(ABC):
    """Latest features per customer; the same answers whatever the backend."""

    @abstractmethod
    def replace_set(self, set_key: str, documents: Iterable[tuple[str, str]], meta: dict[str, Any]) -> int:
        """Replace everything stored for `set_key`; return the number of customers written."""

    @abstractmethod
    def _documents(self, customer_key: str) -> dict[str, str]:
        """Raw JSON documents of one customer, by set key."""

    @abstractmethod
    def delete_customers(self, customer_keys: Sequence[str]) -> dict[str, int]:
        """Remove every document of these customers from every set (erasure); return the documents removed per set.

        Each set's `rows` is lowered to match and its `erasures` counted up (so `state` moves and a
        reader's in-memory copy of the set is rebuilt without them); sets without any of them are not
        touched. A second call removes nothing.
        """

    @abstractmethod
    def sets(self) -> dict[str, dict[str, Any]]:
        """What is materialised: per set key, its version digest, as_of, rows and time."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def lookup(self, customer_key: str, set_keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]] | None:
        """A customer's features by set key (None when the customer is in no materialised set)."""
        docs = self._documents(customer_key)
        if set_keys is not None:
            docs = {k: v for k, v in docs.items() if k in set_keys}
        if not docs:
            return None
        return {k: orjson.loads(v) for k, v in sorted(docs.items())}

    def lookup_many(
        self, customer_keys: Sequence[str], set_keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """`lookup` for many customers in one round trip; customers in no materialised set are left out."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for key, docs in self._documents_many(customer_keys).items():
            if set_keys is not None:
                docs = {k: v for k, v in docs.items() if k in set_keys}
            if docs:
                out[key] = {k: orjson.loads(v) for k, v in sorted(docs.items())}
        return out

    def _documents_many(self, customer_keys: Sequence[str]) -> dict[str, dict[str, str]]:
        """Raw JSON documents of many customers, by customer and set key (backends override: one round trip)."""
        return {key: docs for key in dict.fromkeys(customer_keys) if (docs := self._documents(key))}

    def raw_documents_many(
        self, customer_keys: Sequence[str], set_keys: Sequence[str] | None = None
    ) -> dict[str, list[str]]:
        """Raw JSON documents of many customers, each customer's in set-key order (the order `lookup` merges in).

        What `merged_many` parses; only the sets in `set_keys` when given; customers in none of
        them are left out.
        """
        out: dict[str, list[str]] = {}
        for key, docs in self._documents_many(customer_keys).items():
            found = [docs[s] for s in sorted(docs) if set_keys is None or s in set_keys]
            if found:
                out[key] = found
        return out

    def merged(self, customer_key: str) -> dict[str, Any] | None:
        """A customer's features merged over every set (`merge_documents`); None when the customer is in none."""
        docs = self.lookup(customer_key)
        return None if docs is None else merge_documents(docs)

    def merged_many(self, customer_keys: Sequence[str], view: SetView | None = None) -> StoredFeatures:
        """Many customers' features merged, reading only the view's sets: one round trip, one parse.

        Customers in none of the sets are left out. Where the view is exact, the answer also
        keeps each complete customer's inputs as JSON text (`StoredFeatures.texts`).
        """
        return parse_documents(self.raw_documents_many(customer_keys, None if view is None else view.set_keys), view)

    def state(self, set_keys: Sequence[str]) -> tuple[tuple[str, str], ...]:
        """An opaque token of what is stored for these sets: it changes whenever one is replaced or erased from."""
        raise NotImplementedError

    def customer_keys(self, set_keys: Sequence[str]) -> list[str]:
        """Every customer in any of these sets, in key order."""
        raise NotImplementedError

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SQLiteOnlineStore(OnlineStore):
    """Online store in one SQLite file: a table per set, and a view over them all for lookups.

    A materialisation fills a fresh table in key order, points the set at it and drops the
    old one in one transaction (WAL: readers see the old set or the new one, never a mix),
    so its cost does not grow with the other sets stored beside it.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        if self._con.execute("PRAGMA user_version").fetchone()[0] != _SQLITE_LAYOUT:
            self._reset()

    def _reset(self) -> None:
        """Start an empty store in this layout (the online store is derived data: rebuilt by materialising)."""
        cur = self._con.cursor()
        cur.execute("BEGIN IMMEDIATE")
        objects = "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
        for kind, name in cur.execute(objects).fetchall():
            cur.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
        cur.execute("CREATE TABLE online_sets (feature_set TEXT PRIMARY KEY, tbl TEXT NOT NULL, meta TEXT NOT NULL)")
        self._recreate_view(cur)
        cur.execute(f"PRAGMA user_version = {_SQLITE_LAYOUT}")
        cur.execute("COMMIT")

    def replace_set(self, set_key: str, documents: Iterable[tuple[str, str]], meta: dict[str, Any]) -> int:
        """See OnlineStore.replace_set."""
        cur = self._con.cursor()
        n = 0
        cur.execute("BEGIN IMMEDIATE")
        try:
            old = cur.execute("SELECT tbl FROM online_sets WHERE feature_set = ?", (set_key,)).fetchone()
            tbl = f"online_{uuid.uuid4().hex}"
            cur.execute(f"CREATE TABLE {tbl} (customer_key TEXT PRIMARY KEY, document TEXT NOT NULL) WITHOUT ROWID")
            insert = f"INSERT INTO {tbl} VALUES (?, ?)"
            batch: list[tuple[str, str]] = []
            for pair in documents:
                batch.append(pair)
                if len(batch) >= _BATCH:
                    cur.executemany(insert, batch)
                    n += len(batch)
                    batch = []
            cur.executemany(insert, batch)
            n += len(batch)
            meta = {**meta, "rows": n, "materialized_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            cur.execute(
                "INSERT OR REPLACE INTO online_sets VALUES (?, ?, ?)", (set_key, tbl, orjson.dumps(meta).decode())
            )
            if old:
                cur.execute(f"DROP TABLE {old[0]}")
            self._recreate_view(cur)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return n

    def delete_customers(self, customer_keys: Sequence[str]) -> dict[str, int]:
        """See OnlineStore.delete_customers: deleted pages are zeroed (`secure_delete`), the WAL truncated."""
        keys = orjson.dumps(sorted(set(customer_keys))).decode()
        removed: dict[str, int] = {}
        cur = self._con.cursor()
        cur.execute("PRAGMA secure_delete = ON")  # the deleted documents' bytes do not linger in free pages
        cur.execute("BEGIN IMMEDIATE")
        try:
            for set_key, tbl, meta in cur.execute("SELECT feature_set, tbl, meta FROM online_sets").fetchall():
                n = cur.execute(f"DELETE FROM {tbl} WHERE customer_key IN (SELECT value FROM json_each(?))", (keys,))
                if n.rowcount > 0:
                    removed[set_key] = n.rowcount
                    data = orjson.loads(meta)
                    if isinstance(data.get("rows"), int):
                        data["rows"] = max(0, data["rows"] - n.rowcount)
                    data["erasures"] = int(data.get("erasures", 0)) + 1
                    cur.execute(
                        "UPDATE online_sets SET meta = ? WHERE feature_set = ?", (orjson.dumps(data).decode(), set_key)
                    )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        if removed:
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed

    @staticmethod
    def _recreate_view(cur: sqlite3.Cursor) -> None:
        tables = cur.execute("SELECT feature_set, tbl FROM online_sets ORDER BY feature_set").fetchall()
        cur.execute("DROP VIEW IF EXISTS online_features")
        body = " UNION ALL ".join(
            f"SELECT '{key.replace(chr(39), chr(39) * 2)}' AS feature_set, customer_key, document FROM {tbl}"
            for key, tbl in tables
        )
        empty = "SELECT NULL AS feature_set, NULL AS customer_key, NULL AS document WHERE 0"
        cur.execute(f"CREATE VIEW online_features AS {body or empty}")

    def _documents(self, customer_key: str) -> dict[str, str]:
        rows = self._con.execute(
            "SELECT feature_set, document FROM online_features WHERE customer_key = ?", (customer_key,)
        ).fetchall()
        return dict(rows)

    def map_for_reads(self, max_bytes: int = 1 << 30) -> None:
        """Read pages through a memory map instead of a read call each (SQLite's `mmap_size`).

        For a long-lived reader such as the scoring service: a lookup touches a dozen pages
        across the sets' tables, and with the default page cache most of them are system calls.
        """
        self._con.execute(f"PRAGMA mmap_size = {int(max_bytes)}")

    def _documents_many(self, customer_keys: Sequence[str]) -> dict[str, dict[str, str]]:
        # One statement for the whole batch: the keys travel as one JSON array (no bound-parameter limit),
        # in key order, the tables' order (neighbouring lookups share pages).
        rows = self._con.execute(
            "SELECT customer_key, feature_set, document FROM online_features "
            "WHERE customer_key IN (SELECT value FROM json_each(?))",
            (orjson.dumps(sorted(set(customer_keys))).decode(),),
        ).fetchall()
        out: dict[str, dict[str, str]] = {}
        for key, feature_set, document in rows:
            out.setdefault(key, {})[feature_set] = document
        return out

    def raw_documents_many(
        self, customer_keys: Sequence[str], set_keys: Sequence[str] | None = None
    ) -> dict[str, list[str]]:
        """See OnlineStore.raw_documents_many: one row per customer, the sets' tables joined (a third faster)."""
        keys = orjson.dumps(sorted(set(customer_keys))).decode()
        cur = self._con.cursor()
        in_transaction = self._con.in_transaction
        if not in_transaction:
            cur.execute("BEGIN")  # the sets' tables and their documents from one snapshot
        try:
            wanted = None if set_keys is None else set(set_keys)
            tables = [
                t
                for s, t in cur.execute("SELECT feature_set, tbl FROM online_sets ORDER BY feature_set")
                if wanted is None or s in wanted
            ]
            if not tables:
                return {}
            docs = ", ".join(f"t{i}.document" for i in range(len(tables)))
            joins = " ".join(f"LEFT JOIN {t} t{i} ON t{i}.customer_key = k.value" for i, t in enumerate(tables))
            rows = cur.execute(f"SELECT k.value, {docs} FROM json_each(?) k {joins}", (keys,)).fetchall()
        finally:
            if not in_transaction:
                cur.execute("COMMIT")
        out: dict[str, list[str]] = {}
        for key, *found in rows:
            present = [d for d in found if d is not None]
            if present:
                out[key] = present
        return out

    def sets(self) -> dict[str, dict[str, Any]]:
        """See OnlineStore.sets."""
        rows = self._con.execute("SELECT feature_set, meta FROM online_sets ORDER BY feature_set").fetchall()
        return {k: orjson.loads(v) for k, v in rows}

    def state(self, set_keys: Sequence[str]) -> tuple[tuple[str, str], ...]:
        """See OnlineStore.state: the sets' tables (a replacement writes a new one), and their erasures."""
        wanted = set(set_keys)
        rows = self._con.execute("SELECT feature_set, tbl, meta FROM online_sets ORDER BY feature_set").fetchall()
        return tuple((k, _with_erasures(t, m)) for k, t, m in rows if k in wanted)

    def customer_keys(self, set_keys: Sequence[str]) -> list[str]:
        """See OnlineStore.customer_keys."""
        cur = self._con.cursor()
        in_transaction = self._con.in_transaction
        if not in_transaction:
            cur.execute("BEGIN")
        try:
            tables = [_token_base(t) for _, t in self.state(set_keys)]
            if not tables:
                return []
            union = " UNION ".join(f"SELECT customer_key FROM {t}" for t in tables)
            return [k for (k,) in cur.execute(f"{union} ORDER BY 1")]
        finally:
            if not in_transaction:
                cur.execute("COMMIT")

    def close(self) -> None:
        """See OnlineStore.close."""
        self._con.close()


class RedisOnlineStore(OnlineStore):
    """Online store in Redis: one hash per customer, so a lookup is one round trip.

    A customer's hash holds one field per set and generation (`<set>#<generation>`);
    the `online-sets` hash says which generation of each set is current. A replacement
    writes a new generation beside the old one, flips the pointer in one command, then
    removes the old generation: a reader sees the old set or the new one, never a mix,
    and a replacement that fails half-way leaves the old set as it was (its partial
    generation is removed, or, if even that fails, by the next replacement).
    """

    def __init__(self, url: str, namespace: str = "custintel") -> None:
        import redis

        self.namespace = namespace
        self._r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True)
        try:
            self._r.ping()
        except redis.RedisError as exc:
            raise OnlineStoreUnavailable(f"Redis at {url} cannot be reached: {exc}") from exc

    def _key(self, customer_key: str) -> str:
        return f"{self.namespace}:online:{customer_key}"

    @property
    def _sets_key(self) -> str:
        return f"{self.namespace}:online-sets"

    def _members(self, set_key: str, generation: str) -> str:
        return f"{self.namespace}:online-members:{set_key}#{generation}"

    def _generations(self, set_key: str) -> str:
        return f"{self.namespace}:online-generations:{set_key}"

    def replace_set(self, set_key: str, documents: Iterable[tuple[str, str]], meta: dict[str, Any]) -> int:
        """See OnlineStore.replace_set."""
        generation = uuid.uuid4().hex[:12]
        field = f"{set_key}#{generation}"
        members = self._members(set_key, generation)
        self._r.sadd(self._generations(set_key), generation)
        n = 0
        try:
            pipe = self._r.pipeline(transaction=False)
            batch: list[str] = []
            for key, doc in documents:
                pipe.hset(self._key(key), field, doc)
                batch.append(key)
                if len(batch) >= _BATCH:
                    pipe.sadd(members, *batch)
                    pipe.execute()
                    n += len(batch)
                    batch = []
            if batch:
                pipe.sadd(members, *batch)
            pipe.execute()
            n += len(batch)
        except BaseException:
            self._drop_generation(set_key, generation)
            raise
        meta = {**meta, "rows": n, "generation": generation,
                "materialized_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
        self._r.hset(self._sets_key, set_key, orjson.dumps(meta))  # the switch
        for old in self._r.smembers(self._generations(set_key)):
            if str(old) != generation:
                self._drop_generation(set_key, str(old))
        return n

    def _drop_generation(self, set_key: str, generation: str) -> None:
        """Remove one generation's fields from every customer that has it."""
        field = f"{set_key}#{generation}"
        members = self._members(set_key, generation)
        pipe = self._r.pipeline(transaction=False)
        for i, customer_key in enumerate(self._r.sscan_iter(members, count=_BATCH), start=1):
            pipe.hdel(self._key(str(customer_key)), field)
            if i % _BATCH == 0:
                pipe.execute()
        pipe.execute()
        self._r.delete(members)
        self._r.srem(self._generations(set_key), generation)

    def delete_customers(self, customer_keys: Sequence[str]) -> dict[str, int]:
        """See OnlineStore.delete_customers: each customer's hash is deleted whole, with every generation's fields."""
        keys = sorted(set(customer_keys))
        if not keys:
            return {}
        current = {str(k): str(orjson.loads(v)["generation"]) for k, v in self._r.hgetall(self._sets_key).items()}
        by_field = {f"{k}#{g}": k for k, g in current.items()}
        removed: dict[str, int] = {}
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.hkeys(self._key(key))
        for fields in pipe.execute():
            for f in fields:
                if str(f) in by_field:
                    removed[by_field[str(f)]] = removed.get(by_field[str(f)], 0) + 1
        for key in keys:
            pipe.delete(self._key(key))
        pipe.execute()
        members: dict[str, int] = {}
        for set_key in sorted(current):  # every generation: one a failed replacement left behind holds keys too
            for generation in [current[set_key], *self._r.smembers(self._generations(set_key))]:
                n = int(self._r.srem(self._members(set_key, str(generation)), *keys))
                if str(generation) == current[set_key]:
                    members[set_key] = members.get(set_key, 0) + n
        for set_key, n in members.items():
            if not n:
                continue
            removed[set_key] = max(removed.get(set_key, 0), n)
            meta = orjson.loads(self._r.hget(self._sets_key, set_key) or "{}")
            if meta:
                if isinstance(meta.get("rows"), int):
                    meta["rows"] = max(0, meta["rows"] - n)
                meta["erasures"] = int(meta.get("erasures", 0)) + 1
                self._r.hset(self._sets_key, set_key, orjson.dumps(meta))
        return removed

    def _documents(self, customer_key: str) -> dict[str, str]:
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self._key(customer_key))
        pipe.hgetall(self._sets_key)
        raw, sets = pipe.execute()
        current = {f"{k}#{orjson.loads(v)['generation']}": str(k) for k, v in sets.items()}
        return {current[f]: str(doc) for f, doc in raw.items() if f in current}

    def _documents_many(self, customer_keys: Sequence[str]) -> dict[str, dict[str, str]]:
        keys = list(dict.fromkeys(customer_keys))
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self._sets_key)
        for key in keys:
            pipe.hgetall(self._key(key))
        sets, *raws = pipe.execute()
        current = {f"{k}#{orjson.loads(v)['generation']}": str(k) for k, v in sets.items()}
        out: dict[str, dict[str, str]] = {}
        for key, raw in zip(keys, raws, strict=True):
            docs = {current[f]: str(doc) for f, doc in raw.items() if f in current}
            if docs:
                out[key] = docs
        return out

    def state(self, set_keys: Sequence[str]) -> tuple[tuple[str, str], ...]:
        """See OnlineStore.state: the sets' current generations, and their erasures."""
        raw, wanted = self._r.hgetall(self._sets_key), set(set_keys)
        return tuple((str(k), _with_erasures(str(orjson.loads(raw[k])["generation"]), raw[k])) for k in sorted(raw)
                     if k in wanted)  # fmt: skip

    def customer_keys(self, set_keys: Sequence[str]) -> list[str]:
        """See OnlineStore.customer_keys: the union of the current generations' member sets."""
        members = [self._members(k, _token_base(g)) for k, g in self.state(set_keys)]
        return sorted(str(k) for k in self._r.sunion(members)) if members else []

    def sets(self) -> dict[str, dict[str, Any]]:
        """See OnlineStore.sets."""
        raw = self._r.hgetall(self._sets_key)
        metas = {str(k): orjson.loads(v) for k, v in sorted(raw.items())}
        return {k: {f: v for f, v in m.items() if f != "generation"} for k, m in metas.items()}

    def drop_namespace(self) -> int:
        """Delete every key of this namespace (tests, benchmarks, starting over)."""
        n = 0
        batch: list[str] = []
        for key in self._r.scan_iter(match=f"{self.namespace}:*", count=10_000):
            batch.append(str(key))
            if len(batch) >= _BATCH:
                n += int(self._r.unlink(*batch))
                batch = []
        if batch:
            n += int(self._r.unlink(*batch))
        return n

    def close(self) -> None:
        """See OnlineStore.close."""
        self._r.close()
