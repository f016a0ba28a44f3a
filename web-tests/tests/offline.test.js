// A user logs in and finds everything sent while they were away: unread
// counts, latest messages, and the messages themselves in order.

import assert from "node:assert/strict";
import { test } from "node:test";
import { eventually, withChat } from "../lib/browser.js";

test("messages sent while offline are there after login", { timeout: 180000 }, (t) =>
  withChat(t, "offline", {}, async ({ server, open }) => {
    // Alice has an account but no page open.
    const alice = await server.register("alice");
    const bob = await open("bob");
    await bob.register();
    const carol = await open("carol");
    await carol.register();

    await bob.startChat("alice");
    for (const text of ["Are you there?", "Call me when you land", "Flight AB123 is delayed"]) await bob.send(text);
    await bob.expectMessages(["Are you there?", "Call me when you land", "Flight AB123 is delayed"]);

    const group = await server.api("POST", "/api/groups", { name: "Family", member_ids: [alice.user_id, await bob.userId()] }, await bob.token());
    await carol.startChat("alice");
    await carol.send("Welcome back!");
    await carol.expectMessages(["Welcome back!"]);
    await bob.page.reload();
    await bob.waitOnline();
    await bob.open("Family");
    await bob.send("Dinner at 8?");
    await bob.expectMessages(["Dinner at 8?"]);
    assert.equal(group.name, "Family");

    // Alice logs in: three conversations, newest first, each with its count.
    const page = await open("alice");
    await page.login();
    await eventually(() => page.conversations(), [
      { name: "Family", unread: 1, preview: "bob: Dinner at 8?" },
      { name: "carol", unread: 1, preview: "Welcome back!" },
      { name: "bob", unread: 3, preview: "Flight AB123 is delayed" },
    ]);
    assert.equal(await page.page.title(), "(5) Tern");
    await page.screenshot("offline-unread");

    await page.open("bob");
    await page.expectMessages(["Are you there?", "Call me when you land", "Flight AB123 is delayed"]);
    await eventually(() => page.unread("bob"), 0);
    await page.send("Just landed");
    await page.expectMessages(["Are you there?", "Call me when you land", "Flight AB123 is delayed", "Just landed"]);
    await page.screenshot("conversations");
    await bob.open("alice");
    await bob.expectMessages(["Are you there?", "Call me when you land", "Flight AB123 is delayed", "Just landed"]);

    // What was read stays read after a reload; what was not stays unread.
    await page.page.reload();
    await page.waitOnline();
    await page.expectMessages(["Are you there?", "Call me when you land", "Flight AB123 is delayed", "Just landed"]);
    await eventually(() => page.conversations(), [
      { name: "bob", unread: 0, preview: "You: Just landed" },
      { name: "Family", unread: 1, preview: "bob: Dinner at 8?" },
      { name: "carol", unread: 1, preview: "Welcome back!" },
    ]);
    await page.open("Family");
    await page.expectMessages(["Dinner at 8?"]);
    await page.open("carol");
    await page.expectMessages(["Welcome back!"]);
    await eventually(async () => (await page.conversations()).map((c) => c.unread), [0, 0, 0]);
    assert.equal(await page.page.title(), "Tern");

    // The server agrees: every cursor of this tab's device is at the head,
    // own messages included.
    const state = await server.api("GET", `/api/conversations?device=${await page.device()}`, undefined, await page.token());
    assert.deepEqual(state.conversations.map((c) => [c.unread, c.acked_seq === c.latest_seq]), [[0, true], [0, true], [0, true]]);
  }));
