"""A small Python client for a running `creagen serve` (httpx).

    with CreagenClient("http://127.0.0.1:8000") as c:
        print(c.models())
        print(c.text("shakespeare", prompt="ROMEO:", max_new_tokens=100, seed=1)[0])
        for piece in c.stream_text("shakespeare", prompt="ROMEO:"):
            print(piece, end="", flush=True)
        open("samples.png", "wb").write(c.images("mnist-gan", n=16, seed=0))
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

import httpx


class CreagenHTTPError(RuntimeError):
    """A non-2xx answer from the server; `status` and the server's `detail` are kept."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class CreagenClient:
    """Blocking client for the creagen HTTP API (one connection pool per instance)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> "CreagenClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.is_success:
            return r
        try:
            detail = r.json().get("detail", r.text)
        except (json.JSONDecodeError, AttributeError):
            detail = r.text
        raise CreagenHTTPError(r.status_code, detail)

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._check(self.http.post(path, json={k: v for k, v in body.items() if v is not None}))

    def healthz(self) -> dict[str, Any]:
        """GET /healthz."""
        return self._check(self.http.get("/healthz")).json()

    def models(self) -> list[dict[str, Any]]:
        """The served models (id, family, modality, capabilities, metrics)."""
        return self._check(self.http.get("/v1/models")).json()["models"]

    def model(self, model_id: str) -> dict[str, Any]:
        """One served model's description (CreagenHTTPError 404 when it is not served)."""
        for m in self.models():
            if m["id"] == model_id:
                return m
        raise CreagenHTTPError(404, f"unknown model {model_id!r}")

    def stats(self) -> dict[str, Any]:
        """GET /v1/stats: observed batch sizes per family deployment."""
        return self._check(self.http.get("/v1/stats")).json()

    def text(self, model: str, prompt: str = "", **params: Any) -> list[str]:
        """n continuations of `prompt` (params: max_new_tokens, temperature (unset: the model's default), top_k, top_p, seed, stop, n)."""
        return self._post("/v1/text/generate", {"model": model, "prompt": prompt, **params}).json()["texts"]

    def stream_text(self, model: str, prompt: str = "", **params: Any) -> Iterator[str]:
        """Text pieces as the server produces them (server-sent events)."""
        body = {k: v for k, v in {"model": model, "prompt": prompt, **params, "stream": True}.items() if v is not None}
        with self.http.stream("POST", "/v1/text/generate", json=body) as r:
            if not r.is_success:
                r.read()
                self._check(r)
            event = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if event == "error":
                        raise CreagenHTTPError(200, data.get("detail"))
                    if event == "done":
                        return
                    yield data["text"]
                    event = None

    def images(self, model: str, n: int = 16, seed: int | None = None) -> bytes:
        """n images from the prior as one PNG grid."""
        return self._post("/v1/images/generate", {"model": model, "n": n, "seed": seed}).content

    def images_json(self, model: str, n: int = 16, seed: int | None = None) -> list[bytes]:
        """n images as separate PNGs."""
        body = {"model": model, "n": n, "seed": seed, "format": "json"}
        return [base64.b64decode(s) for s in self._post("/v1/images/generate", body).json()["images"]]

    def interpolate(self, model: str, seed_a: int = 0, seed_b: int = 1, steps: int = 8) -> bytes:
        """A latent walk between two seeds' draws, as one PNG row."""
        body = {"model": model, "seed_a": seed_a, "seed_b": seed_b, "steps": steps}
        return self._post("/v1/images/interpolate", body).content

    def reconstruct(self, model: str, png: bytes) -> bytes:
        """A VAE's reconstruction of a PNG image, as PNG bytes."""
        body = {"model": model, "image": base64.b64encode(png).decode("ascii")}
        return self._post("/v1/images/reconstruct", body).content
