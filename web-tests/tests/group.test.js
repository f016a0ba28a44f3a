// Three people form a group: create with a member, join by id, members list,
// unread counts, live messages in one order everywhere, and a send refused
// with not_member after leaving.

import assert from "node:assert/strict";
import { test } from "node:test";
import { eventually, withChat } from "../lib/browser.js";

async function members(user) {
  return user.page.$$eval("#info-members li[data-user-id]", (els) =>
    els.map((el) => [el.querySelector(".name").textContent, [...el.querySelectorAll(".tag")].map((t) => t.textContent)]),
  );
}

test("three browsers form a group", { timeout: 180000 }, (t) =>
  withChat(t, "group", {}, async ({ server, open }) => {
    const alice = await open("alice");
    await alice.register();
    const bob = await open("bob");
    await bob.register();
    const carol = await open("carol");
    await carol.register();

    // Alice creates the group with Bob; an unknown name is refused first.
    await alice.page.click("#new-group-btn");
    await alice.page.fill("#group-name", "Weekend trip");
    await alice.page.fill("#group-member-input", "bob");
    await alice.page.press("#group-member-input", "Enter");
    await alice.page.locator(".chip", { hasText: "bob" }).waitFor();
    await alice.page.fill("#group-member-input", "bobby");
    await alice.page.press("#group-member-input", "Enter");
    await alice.page.locator("#group-error", { hasText: "There is no user named “bobby”." }).waitFor();
    await alice.page.fill("#group-member-input", "");
    await alice.page.click("#group-form [type=submit]");
    await alice.waitChatTitle("Weekend trip");

    // Its details show the id (copyable) and the members.
    await alice.page.click("#info-btn");
    await eventually(() => members(alice), [["alice", ["Owner", "You"]], ["bob", []]]);
    const groupId = await alice.page.textContent("#info-id");
    assert.match(groupId, /^\d+$/);
    await alice.context.grantPermissions(["clipboard-read", "clipboard-write"]);
    await alice.page.click("#copy-id-btn");
    await alice.page.locator("#copy-id-btn", { hasText: "Copied" }).waitFor();
    assert.equal(await alice.page.evaluate(() => navigator.clipboard.readText()), groupId);

    // Carol joins by id; a wrong id is refused clearly.
    await carol.page.click("#join-group-btn");
    await carol.page.fill("#join-id", "999");
    await carol.page.press("#join-id", "Enter");
    await carol.page.locator("#join-error", { hasText: "There is no group with id 999." }).waitFor();
    await carol.page.fill("#join-id", groupId);
    await carol.page.press("#join-id", "Enter");
    await carol.waitChatTitle("Weekend trip");

    await alice.page.click("#info-close");
    await alice.page.click("#info-btn");
    await eventually(() => members(alice), [["alice", ["Owner", "You"]], ["bob", []], ["carol", []]]);
    await carol.page.click("#info-btn");
    await eventually(() => members(carol), [["carol", ["You"]], ["alice", ["Owner"]], ["bob", []]]);
    await carol.page.keyboard.press("Escape");
    await carol.page.waitForSelector("#info", { state: "hidden" });

    // Bob has not opened the group: his badge counts what arrives.
    await alice.send("Who is in for Saturday?");
    await alice.send("Leaving at 9");
    await eventually(() => bob.conversations(), [{ name: "Weekend trip", unread: 2, preview: "alice: Leaving at 9" }]);
    await bob.open("Weekend trip");
    await eventually(() => bob.unread("Weekend trip"), 0);
    await bob.send("Me!");
    await carol.send("Count me in");
    await alice.send("Great, see you both");

    // Carol's joining is the group's first entry, a line of its own.
    const chat = ["Who is in for Saturday?", "Leaving at 9", "Me!", "Count me in", "Great, see you both"];
    const all = ["carol joined", ...chat];
    for (const u of [alice, bob]) await u.expectMessages(all);
    await carol.expectMessages(["You joined", ...chat]);
    // Bob and Carol have the group open: Alice's latest is read by both.
    await eventually(() => alice.receipt(), "✓✓ Read by 2");
    assert.deepEqual(await alice.readBy(), [2, 2, 2]);
    // Others' runs carry the sender's name.
    assert.deepEqual(await bob.page.$$eval("#messages .sender", (els) => els.map((e) => e.textContent)), ["alice", "carol", "alice"]);
    await alice.screenshot("group-members");

    // Carol leaves (from another device, through the API) while her page is
    // open: her next send is refused with not_member, shown on the message.
    const carolToken = await carol.token();
    await server.api("POST", `/api/groups/${groupId}/leave`, undefined, carolToken);
    await carol.send("Still here?");
    await carol.page.locator("#messages .msg.failed", { hasText: "Still here?" }).waitFor();
    await carol.page.locator("#messages .msg.failed .meta", { hasText: "You are not a member of this group." }).waitFor();
    await carol.page.locator(".toast", { hasText: "You are not a member of this group." }).waitFor();
    await carol.page.locator("#notice", { hasText: "You are not a member of this group any more." }).waitFor();
    assert.equal(await carol.page.isVisible("#composer"), false);
    await carol.screenshot("group-not-member");
    for (const u of [alice, bob]) await u.expectMessages([...all, "carol left"]);

    // Joining again brings the composer back, and the failed message can be
    // retried.
    await carol.page.click("#rejoin-btn");
    await carol.page.locator("#composer").waitFor();
    await carol.page.click("#messages .msg.failed button:has-text('Retry')");
    for (const u of [alice, bob]) await u.expectMessages([...all, "carol left", "carol joined", "Still here?"]);
    // Carol was not in the group for its entry 7.
    await eventually(() => carol.texts(), ["You joined", ...chat, "You joined", "Still here?"]);

    // Bob leaves with the button; the group disappears from his list.
    bob.page.once("dialog", (d) => d.accept());
    await bob.page.click("#info-btn");
    await bob.page.click("#leave-btn");
    await eventually(() => bob.conversations(), []);
    await alice.page.click("#info-close");
    await alice.page.click("#info-btn");
    await eventually(() => members(alice), [["alice", ["Owner", "You"]], ["carol", []]]);
    await alice.expectMessages([...all, "carol left", "carol joined", "Still here?", "bob left"]);
    await eventually(() => alice.page.textContent("#chat-sub"), `Group · ID ${groupId} · 2 members`);
  }));
