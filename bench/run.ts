/**
 * `make bench` / `npm run bench -- --only hub`: the benchmarks run from the sources with tsx. They are not part of the
 * production build (tsconfig.build.json), so they may use test fixtures; what they measure is the build in `dist/`.
 */
import "reflect-metadata";
import { benchCommand } from "./cli.js";

await benchCommand().parseAsync(process.argv);
