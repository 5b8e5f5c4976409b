// xterm.js, loaded on demand by the log view only (it is most of the bundle's weight).

import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";

export interface LogTerminal {
  write(text: string): void;
  /** a handle on the last line written so far (resolves once it is written) */
  markLast(): Promise<LineMark>;
  dispose(): void;
}

export interface LineMark {
  /** scroll the terminal to the line; false once it left the scrollback */
  scrollTo(): boolean;
}

export function createTerminal(container: HTMLElement): LogTerminal {
  const term = new Terminal({
    disableStdin: true,
    convertEol: false, // the caller turns "\n" into "\r\n" itself (see util.terminalLine)
    cursorBlink: false,
    cursorInactiveStyle: "none",
    scrollback: 100_000,
    fontSize: 13,
    lineHeight: 1.15,
    fontFamily: 'SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace',
    theme: {
      background: "#1b1f24",
      foreground: "#e6edf3",
      cursor: "#1b1f24",
      selectionBackground: "#3b5070",
    },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  term.write("\x1b[?25l"); // a log has no cursor
  const refit = () => {
    try {
      fit.fit();
    } catch {
      // the container is not laid out (e.g. hidden): the next resize fits it
    }
  };
  refit();
  const observer = new ResizeObserver(refit);
  observer.observe(container);
  return {
    write: (text) => term.write(text),
    markLast: () =>
      new Promise<LineMark>((resolve) => {
        term.write("", () => {
          // each line ends with "\r\n": the cursor is on the row after it
          const marker = term.registerMarker(-1);
          resolve({
            scrollTo: () => {
              if (!marker || marker.isDisposed || marker.line < 0) return false;
              term.scrollToLine(Math.max(0, marker.line - 2));
              return true;
            },
          });
        });
      }),
    dispose: () => {
      observer.disconnect();
      term.dispose();
    },
  };
}
