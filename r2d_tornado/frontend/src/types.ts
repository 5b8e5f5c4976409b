// Shapes of the REST API's JSON documents (see the API spec in docs/): only what the UI reads.

export type Action = "read" | "build" | "delete";

export interface Permission {
  /** an unfiltered scope: every owner */
  all: boolean;
  owners: string[];
  groups: string[];
}

export interface ServiceInfo {
  version: string;
  builder: string;
  registry: { configured: boolean; url?: string | null };
  limits: { max_concurrent_builds?: number; max_builds_per_owner?: number };
  user: { name: string; kind: string } | null;
  permissions: Partial<Record<Action, Permission>>;
  scopes: Record<Action, string>;
  rules: { name_pattern: string; ref_pattern: string; allowed_repo_patterns: string[] };
  /** the repo2docker options this caller may set (c.BuildOptions), with defaults and bounds */
  options?: BuildOptionsInfo;
}

export interface BuildOptionsInfo {
  allowed: string[];
  defaults: Record<string, unknown>;
  target_repo_dir_prefixes: string[];
  user_id_range: [number, number];
  platforms: string[];
  allowed_build_args: string[];
  max_build_args: number;
  max_appendix_bytes: number;
}

/** what a build was made with: part of the image's identity */
export interface Identity {
  options?: Record<string, unknown>;
  options_digest?: string | null;
  annotations?: Record<string, string>;
}

export interface ImageVersion extends Identity {
  tag: string;
  image: string;
  ref: string | null;
  sha: string | null;
  created: string | null;
  size: number | null;
  local: boolean;
  pushed: boolean;
  build_id?: string | null;
}

export interface Image {
  owner: string;
  name: string;
  display_name: string;
  repository: string;
  image: string;
  repo: string | null;
  ref: string | null;
  sha: string | null;
  created: string | null;
  size: number | null;
  local: boolean;
  pushed: boolean;
  can_build: boolean;
  can_delete: boolean;
  versions: ImageVersion[];
}

export type BuildState =
  "queued" | "fetching" | "building" | "pushing" | "built" | "failed" | "cancelled";

export interface Build extends Identity {
  id: string;
  owner: string;
  name: string;
  display_name: string;
  repo: string;
  ref: string;
  sha: string | null;
  image: string | null;
  state: BuildState;
  done: boolean;
  push: boolean;
  push_error: string | null;
  created: string | null;
  started: string | null;
  finished: string | null;
  queue_position: number | null;
  error: string | null;
  failed_step: string | null;
  last_lines: string[];
  log_lines: number;
  /** the whole log's size and what the kept log omits (its middle, once over the limit) */
  log?: { lines: number; bytes: number; omitted_lines: number; omitted_bytes: number };
  requested_by: string | null;
  /** found again after a restart (in its build container, or from its record in the registry) */
  recovered?: boolean;
  /** why the build's record and log are not (yet) in the registry; the service retries */
  record_error?: string | null;
  can_cancel: boolean;
  logs_url?: string;
  /** set on a 202 answer when an identical build was already queued or running */
  joined?: boolean;
}

/** what the truncation marker of a long log stands for: lines first..last (0-based) */
export interface Omitted {
  lines: number;
  bytes: number;
  first: number;
  last: number;
}

export interface SkippedBuild {
  skipped: true;
  reason: string;
  image: Image;
}

export interface DeleteResult {
  deleted: string[];
  errors: unknown[];
}
