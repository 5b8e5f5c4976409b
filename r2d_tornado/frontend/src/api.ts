// A small fetch wrapper: JSON in and out, the XSRF header, API errors as ApiError.

import type { PageConfig } from "./config";

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  /** the request field the server refused (400 answers), e.g. "repo" */
  readonly field: string | null;
  readonly body: Record<string, unknown>;

  constructor(status: number, message: string, body: Record<string, unknown> = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = typeof body.error === "string" ? body.error : String(status);
    this.field = typeof body.field === "string" ? body.field : null;
    this.body = body;
  }
}

export interface ApiResponse<T> {
  status: number;
  data: T;
}

type Query = Record<string, string | number | boolean | null | undefined>;

export class Api {
  constructor(private readonly config: PageConfig) {}

  /** the absolute path of an API endpoint: always under the service prefix, never the origin root */
  url(path: string, query?: Query): string {
    let url = `${this.config.base_url}api/${path.replace(/^\/+/, "")}`;
    if (query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) {
        if (value !== null && value !== undefined && value !== "") params.set(key, String(value));
      }
      const qs = params.toString();
      if (qs) url += (url.includes("?") ? "&" : "?") + qs;
    }
    return url;
  }

  get<T>(path: string, query?: Query): Promise<ApiResponse<T>> {
    return this.request<T>("GET", path, undefined, query);
  }

  post<T>(path: string, body: unknown): Promise<ApiResponse<T>> {
    return this.request<T>("POST", path, body);
  }

  delete<T>(path: string, query?: Query): Promise<ApiResponse<T>> {
    return this.request<T>("DELETE", path, undefined, query);
  }

  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    query?: Query,
  ): Promise<ApiResponse<T>> {
    const headers: Record<string, string> = {
      Accept: "application/json",
      // JupyterHub's OAuth cookie counts for a fetch() only with the XSRF token: for writes, and
      // for reads too (its check spares navigations, not scripted requests).
      "X-XSRFToken": this.config.xsrf_token,
    };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response: Response;
    try {
      response = await fetch(this.url(path, query), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch {
      throw new ApiError(
        0,
        "The repo2docker service cannot be reached. Check your connection and try again.",
      );
    }
    const type = response.headers.get("Content-Type") || "";
    let data: unknown = null;
    if (type.includes("json")) {
      try {
        data = await response.json();
      } catch {
        data = null;
      }
    } else if (response.ok) {
      // An expired login makes the Hub answer with its HTML login page after a redirect.
      throw new ApiError(
        response.status,
        "The service answered with a web page instead of data: your login may have expired. Reload the page.",
      );
    }
    if (!response.ok) {
      const obj = (data && typeof data === "object" ? data : {}) as Record<string, unknown>;
      let message = typeof obj.message === "string" && obj.message ? obj.message : "";
      if (!message) {
        message =
          response.status === 401
            ? "You are not logged in (or your login expired). Reload the page to log in again."
            : `The request failed: ${response.status} ${response.statusText}`.trim();
      }
      throw new ApiError(response.status, message, obj);
    }
    return { status: response.status, data: data as T };
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
