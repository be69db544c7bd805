"""``redcurrent console``: a web console for operators (extra ``redcurrent[console]``).

Pages: topics (partitions, length, retention, bytes per partition); a topic's groups
(members, assignment, epoch, lag per partition) with live produced / acked rates per
partition, updated in place every second; a group's dead letters (list, one with its
full context; requeue, delete, purge, each behind a confirmation page); a message
browser that reads a partition from an id or a time with no group (XRANGE: it acks
nothing, moves no position).

Starlette serves it (uvicorn runs it): a small ASGI toolkit whose test client and
routing we need, and nothing more (no template engine: pages are built here and every
value is HTML-escaped, because message bodies, keys and headers are user data).

Safety: read-only unless started with ``allow_writes``; every write is a POST that also
needs ``confirm=yes`` (the confirmation page's button), and is refused with 403 when
writes are off. Bound to 127.0.0.1 unless told otherwise; with ``auth_token`` every
request needs ``Authorization: Bearer <token>`` (or the ``token`` query parameter once,
which sets a cookie).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import html
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .admin import Admin
from .errors import ConfigError, RedcurrentError, UnknownGroupError, UnknownTopicError
from .offsets import next_id
from .structs import GroupInfo, TopicInfo

__all__ = ["create_app", "serve"]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f23}
header{background:#7a1020;color:#fff;padding:8px 16px}header a{color:#fff;margin-right:16px}
main{padding:16px}table{border-collapse:collapse;margin:8px 0 16px}
th,td{border:1px solid #ccd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f6}pre{background:#f6f6f8;padding:8px;white-space:pre-wrap;max-width:100ch}
.num{text-align:right}.warn{color:#a00}.note{color:#555}form.inline{display:inline}
"""

_LIVE_JS = """
async function tick(){
  try{
    const r=await fetch(location.pathname.replace(/\\/$/,'')+'/rates',{credentials:'same-origin'});
    if(!r.ok)return;const d=await r.json();
    for(const [p,v] of Object.entries(d.partitions)){
      const row=document.getElementById('rate-'+p);if(!row)continue;
      row.querySelector('.produced').textContent=v.produced.toFixed(1);
      row.querySelector('.acked').textContent=v.acked===null?'?':v.acked.toFixed(1);
      row.querySelector('.length').textContent=v.length;
    }
    document.getElementById('rates-at').textContent=new Date(d.at*1000).toLocaleTimeString();
  }catch(e){}
}
setInterval(tick,1000);tick();
"""


def _e(value: object) -> str:
    """HTML-escape anything shown: every value from Redis is user data."""
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, *, script: str = "") -> HTMLResponse:
    js = f"<script>{script}</script>" if script else ""
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)} · redcurrent</title>"
        f"<style>{_STYLE}</style></head><body><header><a href='/'><b>redcurrent</b></a>"
        f"<a href='/'>topics</a></header><main><h1>{_e(title)}</h1>{body}</main>{js}</body></html>"
    )


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, row_ids: Iterable[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    ids = iter(row_ids) if row_ids is not None else None
    body = []
    for row in rows:
        rid = f" id='{_e(next(ids))}'" if ids is not None else ""
        body.append(f"<tr{rid}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _json(value: Any, *, indent: bool = False) -> str:
    try:
        return _e(orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0).decode())
    except TypeError:
        return _e(repr(value))


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _retention(info: TopicInfo) -> str:
    c = info.config
    parts = []
    if c.maxlen:
        parts.append(f"maxlen ~{c.maxlen}")
    if c.retention_ms:
        parts.append(f"{c.retention_ms / 1000:g} s")
    if c.ttl_ms:
        parts.append(f"message TTL {c.ttl_ms / 1000:g} s")
    return _e(", ".join(parts) or "unbounded")


class _Rates:
    """Produced and acked per second per partition, from the difference of two looks.

    Produced: the growth of the partition's length (trimming at the same moment makes
    it read low). Acked: the growth of (length - lag - pending) summed over the topic's
    groups, for groups whose lag the server reports."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, dict[int, tuple[int, int | None]]]] = {}

    def update(self, topic: str, info: TopicInfo, groups: list[GroupInfo]) -> dict[str, Any]:
        now = time.time()
        counts: dict[int, tuple[int, int | None]] = {}
        for p in info.partition_info:
            acked: int | None = 0
            for g in groups:
                pg = g.partitions[p.partition] if p.partition < len(g.partitions) else None
                if pg is None or pg.lag is None or acked is None:
                    acked = None
                else:
                    acked += max(0, p.length - pg.lag - pg.pending)
            counts[p.partition] = (p.length, acked)
        before = self._last.get(topic)
        self._last[topic] = (now, counts)
        out: dict[int, dict[str, Any]] = {}
        for part, (length, acked) in counts.items():
            produced_rate, acked_rate = 0.0, None
            if before is not None and now > before[0]:
                span = now - before[0]
                old_len, old_acked = before[1].get(part, (length, acked))
                produced_rate = max(0, length - old_len) / span
                if acked is not None and old_acked is not None:
                    acked_rate = max(0, acked - old_acked) / span
            out[part] = {"produced": produced_rate, "acked": acked_rate, "length": length}
        return {"at": now, "partitions": out}


def create_app(
    url: str | None = None,
    *,
    namespace: str = "rc",
    allow_writes: bool = False,
    auth_token: str | None = None,
    admin: Admin | None = None,
) -> Starlette:
    """The console as an ASGI app (``uvicorn.run(create_app(url))``).

    ``admin``: an :class:`Admin` to use instead of one made from ``url``/``namespace``.
    """
    own = admin is None
    adm = admin if admin is not None else Admin(url, namespace=namespace)
    rates = _Rates()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await adm.start()
        try:
            yield
        finally:
            if own:
                await adm.close()

    def guarded(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            if auth_token is not None:
                given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
                    or request.query_params.get("token") or request.cookies.get("rc_console_token") or ""
                if not hmac.compare_digest(given.encode(), auth_token.encode()):
                    return Response("authentication required", status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            try:
                response = await fn(request)
            except (UnknownTopicError, UnknownGroupError) as exc:
                response = _page("not found", f"<p class=warn>{_e(exc)}</p>")
                response.status_code = 404
            except (ConfigError, ValueError) as exc:  # a bad id, time or number in the URL
                response = _page("bad request", f"<p class=warn>{_e(exc)}</p>")
                response.status_code = 400
            except RedcurrentError as exc:
                response = _page("error", f"<p class=warn>{_e(type(exc).__name__)}: {_e(exc)}</p>")
                response.status_code = 503 if exc.retriable else 500
            if auth_token is not None and request.query_params.get("token"):
                response.set_cookie("rc_console_token", auth_token, httponly=True, samesite="strict")
            return response

        return handle

    def writes_allowed(request: Request) -> Response | None:
        if not allow_writes:
            return Response("writes are disabled: start the console with --allow-writes", status_code=403)
        return None

    async def topics_page(request: Request) -> Response:
        rows = []
        for name in await adm.list_topics():
            info = await adm.describe_topic(name)
            size = sum(p.bytes or 0 for p in info.partition_info)
            rows.append((
                f"<a href='/topics/{_e(name)}'>{_e(name)}</a>", _e(info.partitions),
                f"<span class=num>{sum(p.length for p in info.partition_info)}</span>",
                _retention(info), f"<span class=num>{size}</span>",
            ))
        body = _table(("topic", "partitions", "messages", "retention", "bytes"), rows) if rows \
            else "<p class=note>No topics in this namespace yet.</p>"
        return _page("Topics", body)

    async def topic_page(request: Request) -> Response:
        name = request.path_params["topic"]
        info = await adm.describe_topic(name)
        groups = [await adm.describe_group(name, g) for g in await adm.list_groups(name)]
        rates.update(name, info, groups)  # the first look: the page's script takes the next
        parts = _table(
            ("partition", "messages", "first id", "last id", "bytes", "produced/s", "acked/s", "browse"),
            ((_e(p.partition), f"<span class='num length'>{p.length}</span>", _e(p.first_id or ""),
              _e(p.last_id or ""), f"<span class=num>{p.bytes or 0}</span>",
              "<span class='num produced'>0.0</span>", "<span class='num acked'>?</span>",
              f"<a href='/topics/{_e(name)}/partitions/{p.partition}'>messages</a>")
             for p in info.partition_info),
            row_ids=(f"rate-{p.partition}" for p in info.partition_info),
        )
        body = [f"<p>{info.partitions} partitions · retention {_retention(info)} · "
                f"rates at <span id=rates-at>…</span></p>", parts, "<h2>Groups</h2>"]
        if not groups:
            body.append("<p class=note>No consumer group has joined this topic.</p>")
        for g in groups:
            members = _table(
                ("member", "host", "pid", "partitions", "last heartbeat"),
                ((_e(m.member_id), _e(m.host), _e(m.pid), _e(", ".join(map(str, m.partitions))),
                  _e(_when(m.last_heartbeat))) for m in g.members),
            ) if g.members else "<p class=note>no live members</p>"
            lag = _table(
                ("partition", "owner", "pending", "lag", "last delivered"),
                ((_e(p.partition), _e(p.owner or "—"), f"<span class=num>{p.pending}</span>",
                  f"<span class=num>{'?' if p.lag is None else p.lag}</span>", _e(p.last_delivered_id or ""))
                 for p in g.partitions),
            )
            dead = await adm.count_dead_letters(name, g.group)
            body.append(
                f"<h3 id='group-{_e(g.group)}'>{_e(g.group)}</h3><p>epoch {g.epoch} · {len(g.members)} "
                f"member(s) · lag {g.lag} · <a href='/topics/{_e(name)}/groups/{_e(g.group)}/dead-letters'>"
                f"{dead} dead letter(s)</a></p>{members}{lag}"
            )
        return _page(f"Topic {name}", "".join(body), script=_LIVE_JS)

    async def topic_rates(request: Request) -> Response:
        name = request.path_params["topic"]
        info = await adm.describe_topic(name)
        groups = [await adm.describe_group(name, g) for g in await adm.list_groups(name)]
        return JSONResponse(rates.update(name, info, groups))

    async def browse_page(request: Request) -> Response:
        name, partition = request.path_params["topic"], int(request.path_params["partition"])
        start_text = request.query_params.get("from", "").strip()
        count = min(500, max(1, int(request.query_params.get("count", "50") or 50)))  # ValueError: 400
        start: str | dt.datetime = "earliest"
        if start_text:
            try:
                start = dt.datetime.fromisoformat(start_text) if ":" in start_text else start_text
            except ValueError:
                start = start_text
        msgs = await adm.read_partition(name, partition, start, count)
        rows = ((_e(m.id), _e(_when(m.timestamp)), _e(m.key if m.key is not None else ""),
                 f"<pre>{_json(m.value)}</pre>", f"<pre>{_json(dict(m.headers))}</pre>" if m.headers else "")
                for m in msgs)
        nxt = ""
        if len(msgs) == count:
            nxt = f"<p><a href='?from={_e(next_id(msgs[-1].id))}&count={count}'>next {count}</a></p>"
        form = (f"<form method=get><label>from id or time (ISO) <input name=from value='{_e(start_text)}'>"
                f"</label> <input name=count size=4 value='{count}'> <button>read</button></form>"
                "<p class=note>Read without a group: nothing is acked, no position moves.</p>")
        return _page(f"{name} partition {partition}",
                     form + _table(("id", "time", "key", "value", "headers"), rows) + nxt)

    async def dead_letters_page(request: Request) -> Response:
        name, group = request.path_params["topic"], request.path_params["group"]
        letters = await adm.dead_letters(name, group, count=200)
        base = f"/topics/{_e(name)}/groups/{_e(group)}/dead-letters"
        rows = ((f"<a href='{base}/{_e(d.dead_letter_id)}'>{_e(d.dead_letter_id)}</a>", _e(d.partition),
                 _e(d.id), _e(d.key if d.key is not None else ""), _e(d.reason), _e(d.error_type or ""),
                 _e(d.attempts), _e(_when(d.time))) for d in letters)
        purge = (f"<form method=get action='{base}/purge' class=inline><button>purge all…</button></form>"
                 if letters else "")
        body = (_table(("dead letter", "partition", "message id", "key", "reason", "error", "attempts", "time"),
                       rows) if letters else "<p class=note>No dead letters.</p>") + purge
        return _page(f"Dead letters of {group} on {name}", body)

    async def dead_letter_page(request: Request) -> Response:
        name, group, dl_id = (request.path_params[k] for k in ("topic", "group", "id"))
        d = await adm.dead_letter(name, group, dl_id)
        if d is None:
            missing = _page("not found", f"<p class=warn>no dead letter {_e(dl_id)}</p>")
            missing.status_code = 404
            return missing
        base = f"/topics/{_e(name)}/groups/{_e(group)}/dead-letters/{_e(dl_id)}"
        facts = _table(("field", "value"), (
            ("message", f"{_e(d.topic)}[{_e(d.partition)}] {_e(d.id)}"), ("key", _e(d.key)),
            ("reason", _e(d.reason)), ("attempts", _e(d.attempts)),
            ("error", f"{_e(d.error_type or '')}: {_e(d.error or '')}"),
            ("consumer", _e(d.consumer)), ("time", _e(_when(d.time))),
        ))
        body = (f"{facts}<h2>Value</h2><pre id=value>{_json(d.value, indent=True)}</pre>"
                f"<h2>Headers</h2><pre>{_json(d.headers, indent=True)}</pre>"
                f"<h2>Traceback</h2><pre>{_e(d.traceback or '(none)')}</pre>"
                f"<form method=get action='{base}/requeue' class=inline><button>requeue…</button></form> "
                f"<form method=get action='{base}/delete' class=inline><button>delete…</button></form>")
        return _page(f"Dead letter {dl_id}", body)

    def confirm_page(request: Request, what: str) -> Response:
        hidden = "".join(f"<input type=hidden name='{_e(k)}' value='{_e(v)}'>"
                         for k, v in request.query_params.items() if k != "confirm")
        note = "" if allow_writes else "<p class=warn>Writes are disabled (start with --allow-writes).</p>"
        return _page("Confirm", f"<p>{_e(what)}</p>{note}<form method=post>{hidden}"
                                f"<input type=hidden name=confirm value=yes><button id=confirm>yes, do it</button>"
                                f"</form><p><a href='javascript:history.back()'>cancel</a></p>")

    async def confirmed(request: Request) -> Response | None:
        refused = writes_allowed(request)
        if refused is not None:
            return refused
        if (await _form(request)).get("confirm") != "yes":
            return Response("not confirmed", status_code=400)
        return None

    def write_action(
        question: Callable[[dict[str, str]], str],
        act: Callable[[dict[str, str], dict[str, str]], Awaitable[object]],
        back: Callable[[dict[str, str]], str],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A write: GET shows the confirmation page, POST (confirmed, writes allowed) acts."""

        async def handle(request: Request) -> Response:
            params = {k: str(v) for k, v in request.path_params.items()}
            if request.method == "GET":
                return confirm_page(request, question({**params, **request.query_params}))
            refused = await confirmed(request)
            if refused is not None:
                return refused
            await act(params, await _form(request))
            return RedirectResponse(back(params), status_code=303)

        return handle

    def dead_letters_url(p: dict[str, str]) -> str:
        return f"/topics/{p['topic']}/groups/{p['group']}/dead-letters"

    requeue = write_action(
        lambda p: f"Requeue dead letter {p['id']} to its partition of {p['topic']}?",
        lambda p, _f: adm.requeue_dead_letters(p["topic"], p["group"], [p["id"]]),
        dead_letters_url,
    )
    delete = write_action(
        lambda p: f"Delete dead letter {p['id']} for good?",
        lambda p, _f: adm.delete_dead_letters(p["topic"], p["group"], [p["id"]]),
        dead_letters_url,
    )
    purge = write_action(
        lambda p: f"Delete every dead letter of {p['group']} on {p['topic']}?",
        lambda p, _f: adm.purge_dead_letters(p["topic"], p["group"]),
        dead_letters_url,
    )
    reset_offsets = write_action(
        lambda p: f"Move group {p['group']} on {p['topic']} to {p.get('to', 'earliest')}? "
        "(only when no member is live)",
        lambda p, form: adm.reset_offsets(p["topic"], p["group"], form.get("to", "earliest")),
        lambda p: f"/topics/{p['topic']}#group-{p['group']}",
    )

    routes = [
        Route("/", guarded(topics_page)),
        Route("/topics/{topic}", guarded(topic_page)),
        Route("/topics/{topic}/rates", guarded(topic_rates)),
        Route("/topics/{topic}/partitions/{partition:int}", guarded(browse_page)),
        Route("/topics/{topic}/groups/{group}/dead-letters", guarded(dead_letters_page)),
        Route("/topics/{topic}/groups/{group}/dead-letters/purge", guarded(purge), methods=["GET", "POST"]),
        Route("/topics/{topic}/groups/{group}/dead-letters/{id}", guarded(dead_letter_page)),
        Route("/topics/{topic}/groups/{group}/dead-letters/{id}/requeue", guarded(requeue), methods=["GET", "POST"]),
        Route("/topics/{topic}/groups/{group}/dead-letters/{id}/delete", guarded(delete), methods=["GET", "POST"]),
        Route("/topics/{topic}/groups/{group}/offsets", guarded(reset_offsets), methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _form(request: Request) -> dict[str, str]:
    """A POSTed urlencoded form (the confirmation pages send nothing else)."""
    fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    return {k: v[-1] for k, v in fields.items()}


def serve(
    url: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    namespace: str = "rc",
    allow_writes: bool = False,
    auth_token: str | None = None,
) -> None:
    """Run the console until interrupted (blocking)."""
    import uvicorn

    app = create_app(url, namespace=namespace, allow_writes=allow_writes, auth_token=auth_token)
    uvicorn.run(app, host=host, port=port, log_level="warning")
