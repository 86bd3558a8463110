/** A progress line on stderr: a bar redrawn in place on a TTY, a line every 10% otherwise. */
export function progressReporter(stream: NodeJS.WriteStream, label: string, total: number): { update(done: number, errors: number): void; end(): void } {
  const t0 = Date.now();
  let lastDecile = -1;
  let lastDraw = 0;
  const line = (done: number, errors: number) => {
    const rate = done / Math.max(0.001, (Date.now() - t0) / 1000);
    return `${label} ${done}/${total} devices, ${errors} errors, ${rate.toFixed(1)} devices/s`;
  };
  return {
    update(done, errors) {
      if (stream.isTTY) {
        const now = Date.now();
        if (now - lastDraw < 100 && done < total) return;
        lastDraw = now;
        const width = 30;
        const filled = Math.round((done / Math.max(1, total)) * width);
        stream.write(`\r[${"#".repeat(filled)}${".".repeat(width - filled)}] ${line(done, errors)}`);
        return;
      }
      const decile = Math.floor((done / Math.max(1, total)) * 10);
      if (decile !== lastDecile) {
        lastDecile = decile;
        stream.write(`${line(done, errors)}\n`);
      }
    },
    end() {
      if (stream.isTTY) stream.write("\n");
    },
  };
}
