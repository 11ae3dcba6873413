/** Turns zod issues into the one-line messages users see: "field.path: reason". */
import type * as z from "./zod.js";

export function formatIssues(error: z.core.$ZodError, prefix = ""): string {
  return error.issues
    .map((issue) => {
      const path = [prefix, ...issue.path.map(String)].filter(Boolean).join(".");
      return path ? `${path}: ${issue.message}` : issue.message;
    })
    .join("; ");
}

/** A schema that checks a value of type T, for code outside schemas/ that reads files through one. */
export type Schema<T> = z.ZodMiniType<T>;
