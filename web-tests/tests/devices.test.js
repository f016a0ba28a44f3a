// One user in two tabs of one browser, each tab a device of its own: both
// get what the peer sends, each shows what the other sends as the user's
// own, reading in one clears the unread badge in the other, a reload shows
// everything once, and a tab past the session limit closes the oldest.

import assert from "node:assert/strict";
import { test } from "node:test";
import { eventually, withChat } from "../lib/browser.js";

test("two tabs of one user are two devices", { timeout: 180000 }, (t) =>
  withChat(t, "devices", { TERN__GATEWAY__MAX_SESSIONS: "2" }, async ({ server, open }) => {
    const alice = await open("alice");
    // The device every socket of Alice's tabs named, per tab.
    const devices = new Map();
    const watch = (page) => {
      const ids = [];
      devices.set(page, ids);
      page.on("websocket", (ws) => ids.push(new URL(ws.url()).searchParams.get("device")));
    };
    watch(alice.page);
    alice.context.on("page", watch);
    await alice.register();
    // The second tab shares the first one's login (localStorage).
    const tab2 = await alice.openTab();
    await tab2.waitOnline();
    const bob = await open("bob");
    await bob.register();

    // Each tab names a device of its own.
    const [one] = devices.get(alice.page);
    const [two] = devices.get(tab2.page);
    assert.match(one, /^web-[0-9a-f]{16}$/);
    assert.match(two, /^web-[0-9a-f]{16}$/);
    assert.notEqual(one, two);

    // Bob writes while neither tab has the chat open: both count it.
    await bob.startChat("alice");
    await bob.send("Hi Alice");
    await bob.expectMessages(["Hi Alice"]);
    for (const tab of [alice, tab2]) {
      await eventually(() => tab.conversations(), [{ name: "bob", unread: 1, preview: "Hi Alice" }]);
    }

    // Reading it in the first tab clears the second tab's badge, no reload.
    await alice.open("bob");
    await alice.expectMessages(["Hi Alice"]);
    await eventually(() => tab2.conversations(), [{ name: "bob", unread: 0, preview: "Hi Alice" }],
      { message: "the second tab's badge after the first tab read the chat" });
    await eventually(() => tab2.page.title(), "Tern");
    await eventually(() => bob.receipt(), "✓✓ Read");

    // Both tabs get Bob's messages.
    await tab2.open("bob");
    await tab2.expectMessages(["Hi Alice"]);
    await bob.send("Are you there?");
    for (const tab of [alice, tab2]) await tab.expectMessages(["Hi Alice", "Are you there?"]);

    // What Alice sends in one tab shows in the other as her own, and at
    // Bob's, once each; the sending tab does not get it back.
    await alice.send("Yes, on my laptop");
    const all = ["Hi Alice", "Are you there?", "Yes, on my laptop"];
    for (const u of [alice, tab2, bob]) await u.expectMessages(all);
    // And the other way round. Once this arrives everywhere, a stray second
    // copy of the message before it would have arrived too.
    await tab2.send("And from the other tab");
    const more = [...all, "And from the other tab"];
    for (const u of [alice, tab2, bob]) await u.expectMessages(more);
    for (const tab of [alice, tab2]) {
      assert.deepEqual((await tab.messages()).map((m) => m.own), [false, false, true, true]);
      await eventually(() => tab.conversations(), [{ name: "bob", unread: 0, preview: "You: And from the other tab" }]);
    }
    assert.deepEqual((await bob.messages()).map((m) => m.own), [true, true, false, false]);
    await eventually(() => bob.unread("alice"), 0);

    // A reload keeps the tab's device and shows the conversation once.
    await tab2.page.reload();
    await tab2.waitOnline();
    await tab2.waitChatTitle("bob");
    await tab2.expectMessages(more);
    await eventually(() => tab2.conversations(), [{ name: "bob", unread: 0, preview: "You: And from the other tab" }]);
    assert.deepEqual(devices.get(tab2.page), [two, two]);
    assert.equal(await tab2.device(), two);

    // Each tab acked, as its own device, everything up to the head.
    for (const [tab, device] of [[alice, one], [tab2, two]]) {
      const route = `/api/conversations?device=${device}`;
      await eventually(async () => {
        const { conversations } = await server.api("GET", route, undefined, await tab.token());
        return conversations.map((c) => [c.latest_seq, c.acked_seq, c.unread]);
      }, [[4, 4, 0]], { message: `the cursor of device ${device}` });
    }

    // Alice's two sessions are within the limit (two here): nobody was kicked.
    for (const u of [alice, tab2, bob]) assert.equal(await u.connState(), "online");

    // A third tab is past it: the oldest session, the first tab's, is
    // closed, and that tab says so and stays paused instead of fighting back
    // (the new tab would be kicked in turn if it did).
    const tab3 = await alice.openTab();
    await tab3.waitOnline();
    await eventually(() => alice.connState(), "kicked");
    await alice.page.locator("#banner", { hasText: "You opened Tern somewhere else" }).waitFor();
    await eventually(() => tab3.conversations(), [{ name: "bob", unread: 0, preview: "You: And from the other tab" }]);
    // Both live tabs still get messages; the one open in the second tab is
    // read there, so the third shows it read too.
    await bob.send("Still there?");
    await tab2.expectMessages([...more, "Still there?"]);
    await eventually(() => tab3.conversations(), [{ name: "bob", unread: 0, preview: "Still there?" }]);
    assert.deepEqual([await alice.connState(), await tab2.connState(), await tab3.connState()], ["kicked", "online", "online"]);
  }));
