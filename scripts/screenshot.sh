#!/usr/bin/env bash
# Screenshot built pages of the book with headless Chromium, as an offline reader would see them.
#
#   scripts/screenshot.sh                      # book/intro.html and every chapter page
#   scripts/screenshot.sh chapters/01_whisper_from_the_inside.html book/how_to_run.html
#
# Pages are paths relative to the HTML folder. PNGs land in _build/screenshots/ (page path with / turned into __).
# Every host name is resolved to "not found", so a page that still needs a CDN shows up broken in the PNG.
# Environment: HTML_DIR (default _build/html), OUT_DIR (default _build/screenshots), SIZE (default 1280,2400),
# BUDGET_MS (virtual time given to scripts before the shot, default 15000), DUMP_DOM=1 (also write the rendered
# DOM next to each PNG, as .html), CHROMIUM (the browser binary).
set -euo pipefail

cd "$(dirname "$0")/.."
HTML_DIR=${HTML_DIR:-_build/html}
OUT_DIR=${OUT_DIR:-_build/screenshots}
SIZE=${SIZE:-1280,2400}
BUDGET_MS=${BUDGET_MS:-15000}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}

if [[ -z "$CHROMIUM" ]]; then
    echo "screenshot.sh: no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chrome)" >&2
    exit 1
fi
if [[ ! -d "$HTML_DIR" ]]; then
    echo "screenshot.sh: $HTML_DIR does not exist; run 'make book' first" >&2
    exit 1
fi

pages=("$@")
if [[ ${#pages[@]} -eq 0 ]]; then
    pages=(book/intro.html)
    for f in "$HTML_DIR"/chapters/*.html; do
        [[ -e "$f" ]] && pages+=("${f#"$HTML_DIR"/}")
    done
fi

mkdir -p "$OUT_DIR"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

flags=(
    --headless --no-sandbox --disable-gpu --disable-quic --disable-background-networking
    --disable-component-update --no-first-run --disable-sync --hide-scrollbars
    --host-resolver-rules="MAP * ~NOTFOUND"
    --user-data-dir="$profile" --window-size="$SIZE" --virtual-time-budget="$BUDGET_MS"
)

status=0
for page in "${pages[@]}"; do
    src="$HTML_DIR/$page"
    if [[ ! -f "$src" ]]; then
        echo "screenshot.sh: no such page: $src" >&2
        status=1
        continue
    fi
    url="file://$(realpath "$src")"
    name="${page%.html}"
    png="$OUT_DIR/${name//\//__}.png"
    if "$CHROMIUM" "${flags[@]}" --screenshot="$png" "$url" >/dev/null 2>&1 && [[ -s "$png" ]]; then
        echo "$png"
    else
        echo "screenshot.sh: Chromium failed on $page" >&2
        status=1
        continue
    fi
    if [[ "${DUMP_DOM:-0}" == 1 ]]; then
        "$CHROMIUM" "${flags[@]}" --dump-dom "$url" 2>/dev/null > "$OUT_DIR/${name//\//__}.dom.html"
    fi
done
exit $status
