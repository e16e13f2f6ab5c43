"""The console proxy's web pages: noVNC for VNC consoles, an xterm.js terminal for serial ones.

noVNC and xterm.js come from the machine (Debian's novnc package, npm's @xterm/xterm;
[console] novnc_dir and xterm_dir), never from hvmesh itself. When one is
missing its pages answer 503 naming the package to install; the WebSocket, and so
`hvmesh console`, works without either.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from hvmesh.core.config import ConsoleSection

SERIAL_PAGE = Path(__file__).with_name("serial.html")
NOVNC_PAGES = ("vnc_lite.html", "vnc.html")
NOVNC_DIRS = ("app", "core", "vendor")


def _missing(what: str, where: str, package: str) -> web.Response:
    return web.Response(
        status=503,
        text=f"{what} is not installed at {where}: install {package} (or point [console] at it)\n",
    )


def add_routes(app: web.Application, cfg: ConsoleSection) -> None:
    """Serve the serial terminal, xterm.js and noVNC from where `cfg` says they are."""
    xterm = Path(cfg.xterm_dir)
    novnc = Path(cfg.novnc_dir)
    xterm_ok = (xterm / "lib" / "xterm.js").exists()
    novnc_ok = all((novnc / page).exists() for page in NOVNC_PAGES[:1])

    async def serial(_: web.Request) -> web.StreamResponse:
        if not xterm_ok:
            return _missing("xterm.js", str(xterm), "npm's @xterm/xterm (tests/setup_xterm.sh)")
        return web.FileResponse(SERIAL_PAGE, headers={"Cache-Control": "no-store"})

    app.router.add_get("/serial.html", serial)
    if xterm_ok:
        app.router.add_static("/xterm", xterm, follow_symlinks=True)
    for page in NOVNC_PAGES:
        path = novnc / page

        async def novnc_page(_: web.Request, path: Path = path) -> web.StreamResponse:
            if not path.exists():
                return _missing("noVNC", str(novnc), "Debian's novnc package")
            return web.FileResponse(path, headers={"Cache-Control": "no-store"})

        app.router.add_get(f"/{page}", novnc_page)
    if novnc_ok:
        for sub in NOVNC_DIRS:
            if (novnc / sub).is_dir():
                app.router.add_static(f"/{sub}", novnc / sub, follow_symlinks=True)
