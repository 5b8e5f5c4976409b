// Formatting and parsing helpers shared by the views (no DOM access here).

export function shortSha(sha: string | null | undefined): string {
  return sha ? sha.slice(0, 7) : "—";
}

/** bytes in decimal units, as ``docker images`` shows them */
export function humanSize(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes) || bytes < 0) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

export function parseTime(iso: string | null | undefined): number | null {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

/** "3 minutes ago", "yesterday", … */
export function relativeTime(iso: string | null | undefined, now: number = Date.now()): string {
  const t = parseTime(iso);
  if (t === null) return "—";
  const seconds = Math.round((t - now) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  const steps: [number, Intl.RelativeTimeFormatUnit][] = [
    [60, "second"],
    [60, "minute"],
    [24, "hour"],
    [7, "day"],
    [4.35, "week"],
    [12, "month"],
    [Number.POSITIVE_INFINITY, "year"],
  ];
  let value = seconds;
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) return relative.format(Math.round(value), unit);
    value /= size;
  }
  return relative.format(Math.round(value), "year");
}

export function absoluteTime(iso: string | null | undefined): string {
  const t = parseTime(iso);
  if (t === null) return "";
  return new Date(t).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "long" });
}

/** "1m 05s" between two times (the second defaults to now) */
export function duration(
  start: string | null | undefined,
  end: string | null | undefined,
  now: number = Date.now(),
): string {
  const a = parseTime(start);
  if (a === null) return "—";
  const b = parseTime(end) ?? now;
  let s = Math.max(0, Math.round((b - a) / 1000));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

/**
 * The image name the API would pick for a repository URL: the last path segment without ".git",
 * reduced to the characters a name may hold (the same rule as r2d_core.validation).
 */
export function defaultNameForRepo(url: string): string {
  // Split like Python's urlsplit (no URL normalisation, which would turn " " into "%20").
  let rest = url.trim();
  const authority = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/.exec(rest);
  if (authority) rest = rest.slice(authority[0].length);
  const path = rest.split(/[?#]/, 1)[0].replace(/\/+$/, "");
  let last = path.slice(path.lastIndexOf("/") + 1);
  if (last.endsWith(".git")) last = last.slice(0, -4);
  const cleaned = last
    .replace(/[^A-Za-z0-9._-]/g, "-")
    .replace(/^[._-]+/, "")
    .slice(0, 64);
  return cleaned || "image";
}

/** a repository URL without its scheme, for compact display */
export function repoLabel(repo: string | null | undefined): string {
  if (!repo) return "—";
  return repo.replace(/^[a-z][a-z0-9+.-]*:\/\//i, "").replace(/\/+$/, "");
}

export function isWebUrl(url: string | null | undefined): boolean {
  return !!url && /^https?:\/\//i.test(url);
}

// CSI sequences (colours, cursor moves) and OSC sequences (titles, links)
const ANSI = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

export function stripAnsi(text: string): string {
  return text.replace(ANSI, "");
}

/**
 * A log message as the terminal must receive it: each SSE event is one line, which may or may not
 * carry its own newline; xterm needs "\r\n" to return to the first column.
 */
export function terminalLine(message: string): string {
  const text = message.endsWith("\n") ? message : `${message}\n`;
  return text.replace(/\r?\n/g, "\r\n");
}

export interface Route {
  /** path segments after "#/", e.g. ["builds", "b1a2"] */
  path: string[];
  query: URLSearchParams;
}

export function parseHash(hash: string): Route {
  const raw = hash.replace(/^#\/?/, "");
  const q = raw.indexOf("?");
  const path = (q === -1 ? raw : raw.slice(0, q))
    .split("/")
    .filter(Boolean)
    .map((part) => {
      try {
        return decodeURIComponent(part);
      } catch {
        return part;
      }
    });
  return { path, query: new URLSearchParams(q === -1 ? "" : raw.slice(q + 1)) };
}

export function hashFor(path: string[], query?: Record<string, string | null | undefined>): string {
  let hash = `#/${path.map(encodeURIComponent).join("/")}`;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) if (value) params.set(key, value);
    const qs = params.toString();
    if (qs) hash += `?${qs}`;
  }
  return hash;
}

/**
 * Copy text to the clipboard. The Clipboard API needs a secure context, which a Hub on plain
 * http (other than localhost) is not: fall back to a selected textarea and execCommand there.
 */
export async function copyText(text: string): Promise<boolean> {
  if (window.isSecureContext && navigator.clipboard) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through to the old way
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** The "Launch" link for ``image`` from the admin's template (every field URL-encoded), or null
 *  when no template is configured or it is not a path or http(s) URL. */
export function launchHref(
  template: string,
  image: string,
  name: string,
  user: string | null,
): string | null {
  if (!template || !template.includes("{image}")) return null;
  if (!/^(\/|https?:\/\/)/.test(template)) return null;
  const fields: Record<string, string> = { image, image_name: name, user: user ?? "" };
  return template.replace(/\{(image|image_name|user)\}/g, (_m, key: string) =>
    encodeURIComponent(fields[key]),
  );
}
