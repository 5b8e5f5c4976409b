// The page configuration the server embeds in page.html as <script id="r2d-config">.

export interface PageConfig {
  /** the service prefix, ending in "/" (e.g. "/services/repo2docker/") */
  base_url: string;
  xsrf_token: string;
  user: string | null;
  hub_url: string;
  logout_url: string;
  /** the admin's "Launch" URL template ({image}, {image_name}, {user}); "" for no button */
  launch_url: string;
}

function cookie(name: string): string {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

export function readConfig(): PageConfig {
  const el = document.getElementById("r2d-config");
  const raw = (el?.textContent ?? "").trim();
  const parsed = (raw ? JSON.parse(raw) : {}) as Partial<PageConfig>;
  let base = parsed.base_url || "/";
  // Every API URL is base_url + "api/...": a prefix without its trailing slash would glue the two.
  if (!base.endsWith("/")) base += "/";
  return {
    base_url: base,
    // tornado sets the _xsrf cookie when the page renders xsrf_token; the cookie is the fallback
    // for a page that was served from a cache.
    xsrf_token: parsed.xsrf_token || cookie("_xsrf"),
    user: parsed.user ?? null,
    hub_url: parsed.hub_url || "/hub/",
    logout_url: parsed.logout_url || `${parsed.hub_url || "/hub/"}logout`,
    launch_url: parsed.launch_url || "",
  };
}
