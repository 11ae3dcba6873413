#!/usr/bin/env node
import { runCli } from "./load.js";

await runCli("fleetctl");
