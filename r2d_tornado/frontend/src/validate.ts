// Client-side checks of a build request with the API's own rules (GET api/ → rules), so the form
// says what is wrong before a round trip. The server checks again; its 400 message wins.

import type { ServiceInfo } from "./types";

export interface Rules {
  name: RegExp | null;
  ref: RegExp | null;
  repo: RegExp[];
  repoPatterns: string[];
}

function compile(pattern: string | undefined | null): RegExp | null {
  if (!pattern) return null;
  try {
    return new RegExp(pattern);
  } catch {
    // A pattern JS cannot read is left to the server rather than blocking every request.
    console.warn("repo2docker: ignoring a rule pattern JavaScript cannot compile:", pattern);
    return null;
  }
}

export function compileRules(info: ServiceInfo): Rules {
  const repoPatterns = info.rules?.allowed_repo_patterns ?? [];
  return {
    name: compile(info.rules?.name_pattern),
    ref: compile(info.rules?.ref_pattern),
    repo: repoPatterns.map(compile).filter((r): r is RegExp => r !== null),
    repoPatterns,
  };
}

/** an error message for the repository URL, or null when it may be built */
export function checkRepo(url: string, rules: Rules): string | null {
  if (!url) return "Enter the URL of a git repository, e.g. https://github.com/org/repo";
  if (/[\s\x00-\x1f\x7f]/.test(url))
    return "The URL must not contain spaces or control characters.";
  if (url.startsWith("-")) return "The URL must not start with '-'.";
  let parsed: URL | null = null;
  try {
    parsed = new URL(url);
  } catch {
    parsed = null;
  }
  if (!parsed || !/^(https?|git|ssh):$/.test(parsed.protocol) || !parsed.hostname) {
    return "Enter a remote repository URL, e.g. https://github.com/org/repo (local paths are not allowed).";
  }
  if (parsed.password) {
    return "Do not put a password in the URL: use the private repository credentials below.";
  }
  if (rules.repoPatterns.length && !rules.repo.some((r) => r.test(url))) {
    return `This URL is not allowed here. Allowed URLs match: ${rules.repoPatterns.join(", ")}`;
  }
  return null;
}

export function checkRef(ref: string, rules: Rules): string | null {
  if (!ref) return "Enter a branch, tag or commit (HEAD means the default branch).";
  if (ref.startsWith("-")) return "The ref must not start with '-'.";
  if (
    (rules.ref && !rules.ref.test(ref)) ||
    ref.includes("..") ||
    ref.includes("@{") ||
    ref.includes("//") ||
    /(\.lock|\/|\.)$/.test(ref)
  ) {
    return "Not a valid branch, tag or commit: use letters, digits and '._/+-' (at most 255).";
  }
  return null;
}

export function checkName(name: string, rules: Rules): string | null {
  if (!name) return "Enter a name for the image.";
  if (rules.name && !rules.name.test(name)) {
    return "Use 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit.";
  }
  return null;
}

export function checkOwner(owner: string): string | null {
  if (!owner) return "Enter the Hub user who owns the image.";
  if (owner.length > 255 || /[\x00-\x1f\x7f/]/.test(owner)) {
    return "An owner is a Hub user name: no '/' or control characters, at most 255 characters.";
  }
  return null;
}
