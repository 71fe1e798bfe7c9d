"""A browser without JavaScript, on httpx, for sign-in and sign-out through the test OIDC provider.

Redirects are followed by hand, across hosts (gateway -> provider -> gateway), with one
``httpx.AsyncClient`` keeping the cookies of both. Note that cookies do not separate ports: the
gateway and the provider both live on 127.0.0.1, so they share one cookie jar host (their cookie
names differ: the provider's are ``op_session``, ``op_interaction``, ``op_interaction_resume``
and their ``.sig`` companions).

- :func:`login_via_provider`: start URL -> provider login form -> credentials -> back to the start
  URL's origin; returns the first non-redirect response there (or the provider's page when the
  sign-in stops there: wrong password, error page).
- :func:`submit_logout`: end_session URL -> confirmation form -> submitted -> off the provider.
- :func:`page_text` / :func:`provider_error_text`: a page's visible text, for asserts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

MAX_STEPS = 30
# What a browser sends: oidc-provider answers errors with an HTML page to this (with JSON to
# httpx's default ``*/*``).
BROWSER_HEADERS = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
_REDIRECTS = {301, 302, 303, 307, 308}
_INLINE = {
    "a",
    "abbr",
    "b",
    "code",
    "em",
    "i",
    "kbd",
    "label",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
}
_NO_TEXT = {"script", "style", "template", "noscript", "head", "title"}


def origin(url: str | httpx.URL) -> str:
    """``scheme://host:port`` of ``url`` (explicit port always)."""
    parts = urlsplit(str(url))
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return f"{parts.scheme}://{parts.hostname}:{port}"


@dataclass
class HtmlForm:
    action: str  # absolute URL
    method: str  # "GET" or "POST"
    fields: list[tuple[str, str]] = field(default_factory=list)  # hidden/text/... inputs
    input_types: dict[str, str] = field(default_factory=dict)  # name -> type
    submit: tuple[str, str] | None = None  # the first named submit button

    @property
    def is_login(self) -> bool:
        return "password" in self.input_types.values()

    @property
    def only_hidden(self) -> bool:
        kinds = self.input_types.values()
        return bool(kinds) and all(kind == "hidden" for kind in kinds)

    def data(self, **values: str) -> dict[str, list[str]]:
        """The form's fields with ``values`` filled in (each replaces a field of that name)."""
        pairs = [(name, values.get(name, value)) for name, value in self.fields]
        pairs += [(name, value) for name, value in values.items() if name not in self.input_types]
        if self.submit is not None:
            pairs.append(self.submit)
        out: dict[str, list[str]] = {}
        for name, value in pairs:
            out.setdefault(name, []).append(value)
        return out


class _Parser(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.forms: list[HtmlForm] = []
        self.text: list[str] = []
        self._form: HtmlForm | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag not in _INLINE:
            self.text.append(" ")
        if tag in _NO_TEXT:
            self._skip += 1
        elif tag == "form":
            self._form = HtmlForm(
                action=urljoin(self.base_url, a.get("action") or self.base_url),
                method=(a.get("method") or "GET").upper(),
            )
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            kind = (a.get("type") or "text").lower()
            if kind in {"submit", "button", "image", "reset"}:
                if kind == "submit" and self._form.submit is None:
                    self._form.submit = (a["name"], a.get("value", ""))
            elif kind in {"checkbox", "radio"}:
                self._form.input_types[a["name"]] = kind
                if "checked" in a:
                    self._form.fields.append((a["name"], a.get("value", "on")))
            else:
                self._form.input_types[a["name"]] = kind
                self._form.fields.append((a["name"], a.get("value", "")))
        elif (
            tag == "button"
            and self._form is not None
            and a.get("name")
            and (a.get("type") or "submit").lower() == "submit"
            and self._form.submit is None
        ):
            self._form.submit = (a["name"], a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag not in _INLINE:
            self.text.append(" ")
        if tag in _NO_TEXT:
            self._skip = max(self._skip - 1, 0)
        elif tag == "form":
            self._form = None

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def parse_forms(html: str, base_url: str | httpx.URL) -> list[HtmlForm]:
    """The ``<form>``s of ``html``, with actions made absolute against ``base_url``."""
    parser = _Parser(str(base_url))
    parser.feed(html)
    parser.close()
    return parser.forms


def page_text(html: str) -> str:
    """The visible text of ``html``, whitespace collapsed (no scripts, styles or title)."""
    parser = _Parser("http://localhost/")
    parser.feed(html)
    parser.close()
    return " ".join("".join(parser.text).split())


def provider_error_text(response: httpx.Response) -> str:
    """The text of the provider's page (error page, login form with its error), for asserts.

    The provider's error pages read ``oops! something went wrong error: <code>
    error_description: <text>``; a JSON error (a request without ``Accept: text/html``) is
    rendered the same way, ``error: <code> error_description: <text>``.
    """
    if "json" in response.headers.get("content-type", ""):
        try:
            body = response.json()
        except ValueError:
            return response.text
        if isinstance(body, dict):
            return " ".join(f"{key}: {value}" for key, value in body.items())
        return response.text
    return page_text(response.text)


async def _follow(
    client: httpx.AsyncClient,
    response: httpx.Response,
    *,
    method: str,
    data: dict[str, list[str]] | None,
) -> tuple[httpx.Response, str, dict[str, list[str]] | None]:
    """Take one redirect step; 307/308 repeat the method and body, others become a GET."""
    target = response.url.join(response.headers["location"])
    if response.status_code in {307, 308} and method != "GET":
        nxt = await client.request(
            method, target, data=data, follow_redirects=False, headers=BROWSER_HEADERS
        )
        return nxt, method, data
    return await client.get(target, follow_redirects=False, headers=BROWSER_HEADERS), "GET", None


async def _submit(
    client: httpx.AsyncClient, form: HtmlForm, **values: str
) -> tuple[httpx.Response, str, dict[str, list[str]] | None]:
    data = form.data(**values)
    if form.method == "POST":
        return (
            await client.post(
                form.action, data=data, follow_redirects=False, headers=BROWSER_HEADERS
            ),
            "POST",
            data,
        )
    return (
        await client.get(form.action, params=data, follow_redirects=False, headers=BROWSER_HEADERS),
        "GET",
        None,
    )


async def login_via_provider(
    client: httpx.AsyncClient,
    start_url: str,
    username: str,
    password: str,
    *,
    home: str | None = None,
    max_steps: int = MAX_STEPS,
) -> httpx.Response:
    """Sign in through the provider, starting at ``start_url`` (e.g. the gateway's login route;
    give ``home``, the gateway's origin, when starting elsewhere).

    Follows redirects across hosts, fills and posts the provider's login form once, submits
    auto-submitting forms (``response_mode=form_post``), and returns the first non-redirect
    response on ``start_url``'s origin (the gateway after its callback and its own redirects).
    If the flow stops on another origin (wrong password: the form again, with "Invalid username
    or password"; a provider error page), that response is returned instead: check
    ``origin(response.url)``.
    """
    home = origin(home or start_url)
    response = await client.get(start_url, follow_redirects=False, headers=BROWSER_HEADERS)
    method: str = "GET"
    data: dict[str, list[str]] | None = None
    logged_in = False
    for _ in range(max_steps):
        if response.status_code in _REDIRECTS and "location" in response.headers:
            response, method, data = await _follow(client, response, method=method, data=data)
            continue
        if origin(response.url) == home:
            return response
        forms = parse_forms(response.text, response.url) if _is_html(response) else []
        login = next((f for f in forms if f.is_login), None)
        if login is not None and not logged_in:
            logged_in = True
            response, method, data = await _submit(
                client, login, username=username, password=password
            )
            continue
        auto = forms[0] if len(forms) == 1 and forms[0].only_hidden else None
        if auto is not None and response.status_code == 200:
            response, method, data = await _submit(client, auto)
            continue
        return response
    raise RuntimeError(f"sign-in did not settle within {max_steps} steps (at {response.url})")


async def submit_logout(
    client: httpx.AsyncClient,
    url: str,
    *,
    provider_origin: str | None = None,
    follow_off_provider: bool = True,
    max_steps: int = MAX_STEPS,
) -> httpx.Response:
    """Sign out at the provider's end_session ``url`` (or a URL that redirects there).

    Follows redirects, submits the provider's sign-out confirmation form (it carries ``xsrf`` and
    ``logout=yes``) once, and then:

    - ``follow_off_provider=True``: follows the redirect off the provider (to the registered
      ``post_logout_redirect_uri``) and returns the first non-redirect response there;
    - ``follow_off_provider=False``: returns the redirect response that leaves the provider
      (read its ``Location``).

    When the provider answers with a page instead (its error page for an unregistered
    ``post_logout_redirect_uri``, or its "Signed out" page when none was given), that page is
    returned. ``provider_origin`` defaults to ``url``'s origin.
    """
    provider = provider_origin or origin(url)
    response = await client.get(url, follow_redirects=False, headers=BROWSER_HEADERS)
    method: str = "GET"
    data: dict[str, list[str]] | None = None
    confirmed = False
    for _ in range(max_steps):
        if response.status_code in _REDIRECTS and "location" in response.headers:
            target = response.url.join(response.headers["location"])
            if origin(target) != provider and not follow_off_provider and confirmed:
                return response
            response, method, data = await _follow(client, response, method=method, data=data)
            continue
        if origin(response.url) != provider or confirmed or response.status_code != 200:
            return response
        forms = [f for f in parse_forms(response.text, response.url) if f.method == "POST"]
        if not forms:
            return response
        confirmed = True
        response, method, data = await _submit(client, forms[0])
    raise RuntimeError(f"sign-out did not settle within {max_steps} steps (at {response.url})")


async def follow_until(
    client: httpx.AsyncClient,
    response: httpx.Response,
    stop: Callable[[httpx.URL], bool],
    *,
    max_steps: int = MAX_STEPS,
) -> httpx.Response:
    """Follow redirects (as GETs) until one's ``Location`` satisfies ``stop``; return that
    redirect response (not followed), or the first non-redirect response."""
    for _ in range(max_steps):
        if response.status_code not in _REDIRECTS or "location" not in response.headers:
            return response
        target = response.url.join(response.headers["location"])
        if stop(target):
            return response
        response = await client.get(target, follow_redirects=False, headers=BROWSER_HEADERS)
    raise RuntimeError(f"redirects did not settle within {max_steps} steps (at {response.url})")


def _is_html(response: httpx.Response) -> bool:
    return "html" in response.headers.get("content-type", "")
