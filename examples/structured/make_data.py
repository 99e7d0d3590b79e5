"""Writes two structured-output tasks beside this file, deterministic. Run: python examples/structured/make_data.py

intents/  a bank's help desk: a customer's message -> one of 40 intent labels (labels.txt), many of them
          near neighbours (card_lost / card_stolen, transfer_failed / transfer_pending). Each label has 8
          phrasings; 6 train (480 rows, two fills each) and 2 are held out for test (80 rows): the test
          asks in words the fine-tune never saw.
tickets/  a shop's support mail -> one JSON object (schema.json: customer, order_id as AB-1234, product and
          issue from closed lists, refund true/false, priority low/normal/urgent). Messages are built from
          interchangeable pieces in shuffled order; the test (60 rows) uses pieces held out of training.

Each task has a system.txt, the instruction the prompt-only baseline gets; the fine-tune gets the bare message.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

INTENTS = {
    "card_lost": ["I lost my card somewhere in {city}.", "Can't find my debit card anywhere, what do I do?",
                  "My card is missing, I think I dropped it.", "I misplaced my bank card yesterday.",
                  "Help, my card is gone and I don't know where I left it.", "lost card, please block it",
                  "I seem to have lost my credit card at the {merchant}.", "My card fell out of my pocket and I can't find it."],
    "card_stolen": ["Someone stole my wallet with my card in it.", "My card was stolen in {city} last night.",
                    "I was pickpocketed and they took my card.", "A thief took my bag, my card was inside.",
                    "My card has been stolen, please freeze it.", "stolen card!!",
                    "Somebody took my card from my desk at work.", "I was robbed and my bank card is gone."],
    "card_not_arrived": ["My new card still hasn't arrived.", "It's been {days} days and no card in the mail.",
                         "When will my replacement card get here?", "I ordered a card but never received it.",
                         "Still waiting for the card you sent me.", "card not delivered yet",
                         "The card you promised hasn't shown up at my address.", "Where is my new debit card? It never came."],
    "card_declined": ["My card was declined at the {merchant}.", "Why does my card keep getting rejected?",
                      "Payment failed with my card even though I have money.", "The shop said my card was refused.",
                      "My card got declined online for {amount} euros.", "card declined again",
                      "Every time I pay at the {merchant} the card is declined.", "Why was my purchase of {amount} euros refused?"],
    "card_activate": ["How do I activate my new card?", "I got my card, how do I start using it?",
                      "Need to activate the card that just arrived.", "What's the way to turn on my new card?",
                      "My card arrived, activate it please.", "activate card",
                      "Can you switch on the card I received today?", "The new card came, what do I do to make it work?"],
    "card_expiring": ["My card expires next month, will I get a new one?", "What happens when my card runs out?",
                      "My card's expiry date is coming up.", "Do you send a new card before the old one expires?",
                      "The card is about to expire.", "card expiring soon",
                      "My card is valid only until the end of this month.", "Will a renewal card be sent before mine lapses?"],
    "pin_forgotten": ["I forgot my PIN.", "I can't remember the PIN for my card.", "What's my PIN? I forgot it.",
                      "My PIN slipped my mind, how do I get it?", "Forgotten PIN, need help.", "forgot pin",
                      "I have no idea what my card's PIN is anymore.", "Can you remind me of my PIN? I've forgotten it."],
    "pin_blocked": ["My PIN is blocked after too many tries.", "I entered the wrong PIN three times and now it's locked.",
                    "The ATM says my PIN is blocked.", "How do I unblock my PIN?", "PIN locked, what now?",
                    "pin blocked", "I typed the PIN wrong too often and it's blocked now.", "My PIN got locked at the {merchant}."],
    "pin_change": ["I want to change my PIN.", "How can I set a new PIN?", "Can I pick a different PIN for my card?",
                   "I'd like to update my card PIN.", "Change my PIN to something easier.", "change pin",
                   "Is it possible to choose another PIN?", "I need a new PIN, the old one is too obvious."],
    "contactless_failed": ["Contactless payment isn't working.", "Tapping my card does nothing at the {merchant}.",
                           "Why won't my card pay contactless?", "The tap to pay function fails every time.",
                           "Contactless stopped working on my card.", "contactless not working",
                           "I have to insert my card because tapping is refused.", "My card doesn't work when I tap it."],
    "atm_cash_not_dispensed": ["The ATM took my money but gave me no cash.", "I withdrew {amount} euros but nothing came out.",
                               "Cash machine didn't give me the money but charged me.", "ATM charged me without dispensing cash.",
                               "No cash came out of the machine in {city}.", "atm no cash",
                               "My account shows a withdrawal of {amount} but the ATM gave nothing.", "The cash point kept my money."],
    "atm_card_swallowed": ["The ATM swallowed my card.", "The cash machine kept my card.",
                           "My card got stuck in the ATM in {city}.", "The machine ate my card, how do I get it back?",
                           "ATM retained my card.", "atm ate card",
                           "My card never came back out of the cash machine.", "The ATM confiscated my card."],
    "transfer_failed": ["My transfer to {name} failed.", "The money I sent didn't go through.",
                        "Why did my bank transfer fail?", "I tried to send {amount} euros but it was rejected.",
                        "Transfer error when paying {name}.", "transfer failed",
                        "The payment to my landlord bounced back.", "My transfer of {amount} euros was returned as failed."],
    "transfer_pending": ["My transfer is still pending.", "The money I sent {days} days ago hasn't arrived.",
                         "Why is my transfer taking so long?", "Transfer stuck in processing.",
                         "{name} still hasn't received my transfer.", "transfer pending",
                         "How long until my transfer leaves the pending state?", "The transfer shows as in progress for days."],
    "transfer_wrong_account": ["I sent money to the wrong account.", "I made a transfer to the wrong person.",
                               "Oops, I paid {amount} euros to the wrong IBAN.", "Can I get back money sent to a wrong account?",
                               "Transferred to {name} by mistake.", "wrong account transfer",
                               "I typed the account number wrong and the money went elsewhere.", "My payment went to a stranger by mistake."],
    "transfer_limit": ["What is the maximum I can transfer?", "Is there a limit on transfers?",
                       "Can I send {amount} euros in one go?", "How much can I transfer per day?",
                       "My transfer is above the limit, can you raise it?", "transfer limit",
                       "What's the daily cap for sending money?", "Why can't I send more than a certain amount?"],
    "balance_check": ["What is my balance?", "How much money do I have?", "Can you tell me my account balance?",
                      "Show me what's left in my account.", "Check my balance please.", "balance",
                      "How much is in my current account right now?", "What's the amount available on my account?"],
    "statement_request": ["I need a bank statement.", "Can I get my statement for last month?",
                          "Send me an account statement please.", "Where can I download my statements?",
                          "I need a statement for my visa application.", "statement please",
                          "Could you email me the statements for this year?", "I require a printed statement of my account."],
    "address_change": ["I moved, please update my address.", "How do I change my home address?",
                       "My new address is in {city}.", "Update the address on my account.",
                       "I need to change where my letters go.", "change address",
                       "I've relocated to {city}, change my details.", "Please register my new street address."],
    "phone_change": ["I have a new phone number.", "How do I update my mobile number?",
                     "Change the phone number on my account.", "My number changed, please update it.",
                     "I got a new SIM with a different number.", "new phone number",
                     "Please replace my old mobile number.", "The phone number you have for me is outdated."],
    "name_change": ["I got married and changed my name.", "How do I update my surname?",
                    "My name is different now, please change it.", "I need to change the name on my account.",
                    "Legal name change, what documents do you need?", "change my name",
                    "My last name changed after the wedding.", "Please update my account to my new name."],
    "account_close": ["I want to close my account.", "Please shut down my bank account.",
                      "How do I cancel my account with you?", "I'm leaving, close my account.",
                      "Terminate my account please.", "close account",
                      "I no longer want to bank here, end my account.", "Can I delete my account entirely?"],
    "account_open": ["I'd like to open an account.", "How can I become a customer?",
                     "I want a new current account.", "Can I open a bank account online?",
                     "Open a savings account for me.", "new account",
                     "What do I need to sign up for an account?", "I want to start banking with you."],
    "joint_account": ["Can I open a joint account with my partner?", "How do I add {name} to my account?",
                      "We want a shared account.", "Make my account joint with my wife.",
                      "Joint account options?", "joint account",
                      "Can two people hold one account?", "I'd like {name} to co-own my account."],
    "loan_apply": ["I want to apply for a loan.", "Can I borrow {amount} euros?", "How do I get a personal loan?",
                   "I need a loan for a car.", "What are your loan options?", "loan application",
                   "I'd like to borrow money for home repairs.", "Could I get credit of {amount} euros?"],
    "loan_payoff": ["I want to pay off my loan early.", "How much to settle my loan now?",
                    "Can I repay the remaining loan in full?", "Early repayment of my loan please.",
                    "What's my loan payoff amount?", "pay off loan",
                    "I'd like to clear my loan before the end of the term.", "Is there a fee for repaying my loan early?"],
    "mortgage_rate": ["What are your mortgage rates?", "How much interest on a home loan?",
                      "Current mortgage interest rate?", "I'm buying a house, what rate can I get?",
                      "Tell me about fixed mortgage rates.", "mortgage rate",
                      "What rate would a 20 year mortgage have?", "How expensive is a mortgage with you right now?"],
    "overdraft_increase": ["Can I increase my overdraft?", "I need a bigger overdraft limit.",
                           "Raise my overdraft to {amount} euros please.", "How do I extend my overdraft?",
                           "My overdraft is too small.", "overdraft increase",
                           "Please allow me to go further below zero.", "I'd like more overdraft room this month."],
    "fee_dispute": ["Why was I charged a fee?", "I want to dispute this fee.", "You charged me {amount} euros in fees, why?",
                    "This monthly fee is wrong.", "Refund the fee you took.", "unfair fee",
                    "I don't agree with the account charge this month.", "There's a service charge I never agreed to."],
    "unknown_charge": ["There's a payment I don't recognise.", "Someone charged {amount} euros to my card and it wasn't me.",
                       "I see a transaction from {merchant} I never made.", "Unknown charge on my statement.",
                       "Who took money from my account?", "strange transaction",
                       "A purchase appeared that I did not authorise.", "My card shows a payment in {city} but I wasn't there."],
    "refund_not_received": ["My refund hasn't arrived.", "The {merchant} refunded me but I don't see it.",
                            "Where is my refund of {amount} euros?", "I was promised a refund days ago.",
                            "Refund still missing from my account.", "refund missing",
                            "The shop says they sent the money back, it's not here.", "Still no sign of the reimbursement from {merchant}."],
    "direct_debit_cancel": ["Cancel a direct debit please.", "How do I stop a direct debit?",
                            "I want to stop paying {merchant} by direct debit.", "Remove the direct debit for my gym.",
                            "End my direct debit mandate.", "cancel direct debit",
                            "Stop the automatic collection by {merchant}.", "I want to revoke a debit authorisation."],
    "standing_order_setup": ["Set up a standing order to {name}.", "How do I create a monthly payment?",
                             "I want to pay {amount} euros every month automatically.", "Schedule a recurring transfer.",
                             "Make a standing order for my rent.", "standing order",
                             "Can you pay my landlord the same amount each month?", "I'd like an automatic monthly transfer to {name}."],
    "exchange_rate": ["What's the exchange rate for dollars?", "How many pounds for {amount} euros?",
                      "Current euro to yen rate?", "What rate do you use to convert currency?",
                      "Exchange rate today?", "exchange rate",
                      "How much is one euro in Swiss francs?", "What conversion rate would I get for dollars?"],
    "foreign_fee": ["Do you charge fees abroad?", "Is there a fee for paying in another currency?",
                    "Why did I pay extra for a purchase in {city}?", "Foreign transaction fee?",
                    "Will I be charged to use my card overseas?", "fees abroad",
                    "I was charged a percentage on a payment in dollars.", "What does it cost to spend in other currencies?"],
    "travel_notice": ["I'm travelling to {city} next week.", "Let you know I'll be abroad.",
                      "Please note I'm going on holiday overseas.", "Will my card work while I'm travelling?",
                      "I'm off to {city}, don't block my card.", "travel notice",
                      "I'll use my card in another country soon.", "Heads up, I'm going on a trip abroad."],
    "top_up_failed": ["My top up failed.", "I tried to add {amount} euros but it didn't work.",
                      "Top-up was rejected.", "Why can't I top up my account?",
                      "Adding money failed with my other card.", "top up failed",
                      "The money I loaded onto my account didn't arrive.", "Loading funds keeps failing."],
    "cheque_deposit": ["How do I deposit a cheque?", "Can I cash a cheque with you?",
                       "I have a cheque for {amount} euros to pay in.", "Deposit a check please.",
                       "Where can I pay in a cheque?", "cheque deposit",
                       "Can I scan a cheque in the app?", "My grandmother gave me a cheque, how do I bank it?"],
    "savings_interest": ["What interest do I get on savings?", "How much does my savings account pay?",
                         "Savings interest rate?", "What's the rate on your savings accounts?",
                         "Will my savings earn interest?", "savings rate",
                         "How much would {amount} euros earn in a year?", "Do you pay interest on deposits?"],
    "app_login_problem": ["I can't log in to the app.", "The app won't let me sign in.",
                          "Login keeps failing on my phone.", "I'm locked out of online banking.",
                          "App says my credentials are wrong.", "cant login",
                          "The banking app rejects my fingerprint login.", "I get an error every time I try to sign in."],
}
NAMES = ["Ana Ruiz", "Tom Berg", "Mei Chen", "Omar Haddad", "Lena Vogel", "Raj Patel", "Ines Costa", "Jon Kato",
         "Sara Lind", "Pavel Novak", "Nora Quinn", "Yusuf Demir", "Clara Moss", "Ivo Petrov", "Hana Sato", "Leo Duarte"]
CITIES = ["Oslo", "Lisbon", "Madrid", "Berlin", "Lyon", "Porto", "Vienna", "Prague", "Dublin", "Bergen", "Krakow", "Turin"]
MERCHANTS = ["supermarket", "petrol station", "bookshop", "pharmacy", "cinema", "bakery", "hotel", "airport shop"]
SYSTEM_INTENTS = ("Classify the customer's message into exactly one of these intents and answer with the intent "
                  "label only: {labels}.")


def fill(text: str, rng: random.Random) -> str:
    return text.format(name=rng.choice(NAMES), city=rng.choice(CITIES), merchant=rng.choice(MERCHANTS),
                       amount=rng.choice([20, 50, 75, 120, 300, 800, 1500]), days=rng.choice([3, 5, 10, 14]))


def intents(rng: random.Random) -> tuple[list[dict], list[dict]]:
    train, test = [], []
    for label, phrasings in INTENTS.items():
        held = set(rng.sample(range(len(phrasings)), 2))
        for k, p in enumerate(phrasings):
            for _ in range(1 if k in held else 2):
                row = {"messages": [{"role": "user", "content": fill(p, rng)}, {"role": "assistant", "content": label}]}
                (test if k in held else train).append(row)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


PRODUCTS = ["laptop", "phone", "tablet", "headphones", "monitor", "keyboard", "printer", "camera"]
ISSUES = {"damaged": (["arrived with a cracked screen", "came broken", "is dented and scratched"],
                      ["was smashed in the box", "arrived damaged"]),
          "missing": (["never arrived", "is not in the parcel", "was missing from the delivery"],
                      ["did not come at all", "was not in the box"]),
          "wrong_item": (["is the wrong model", "is not what I ordered", "came in the wrong colour"],
                         ["turned out to be a different product", "is someone else's order"]),
          "late": (["is a week late", "still hasn't been delivered after the promised date", "is overdue"],
                   ["has been delayed for days", "was due last Monday and is still not here"]),
          "not_working": (["won't turn on", "stopped working after two days", "keeps crashing"],
                          ["is dead on arrival", "does not power up"]),
          "billing": (["was charged twice", "cost more than the listed price", "was billed to the wrong card"],
                      ["shows a double charge", "was invoiced at the wrong price"])}
REFUND = {True: (["I want my money back.", "Please refund me.", "Refund it to my card."],
                 ["I'd like a full refund.", "Give me my money back."]),
          False: (["Please send a replacement.", "Can you fix it?", "I'd like a new one instead."],
                  ["A replacement would be fine.", "Please exchange it."])}
PRIORITY = {"urgent": (["This is urgent.", "I need it solved today!", "ASAP please."], ["It's an emergency.", "Please hurry."]),
            "normal": ([""], [""]),
            "low": (["No rush.", "Whenever you can.", "It's not urgent."], ["Take your time.", "No hurry at all."])}
OPENERS = (["Hi, this is {customer}.", "Hello, {customer} here.", "Dear support, my name is {customer}."],
           ["Good day, I am {customer}.", "From {customer}:"])
BODY = (["My {product} from order {order_id} {issue}.", "Order {order_id}: the {product} {issue}.",
         "The {product} I bought (order {order_id}) {issue}."],
        ["Regarding order {order_id}, the {product} {issue}.", "About my {product}, order {order_id}: it {issue}."])
TICKET_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["customer", "order_id", "product", "issue", "refund", "priority"],
    "properties": {
        "customer": {"type": "string", "maxLength": 40},
        "order_id": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4}$"},
        "product": {"enum": PRODUCTS},
        "issue": {"enum": list(ISSUES)},
        "refund": {"type": "boolean"},
        "priority": {"enum": list(PRIORITY)}}}
SYSTEM_TICKETS = ("Read the customer's support message and answer with one JSON object with the keys customer, "
                  "order_id (like AB-1234), product (one of {products}), issue (one of {issues}), refund (true if "
                  "they want their money back, else false) and priority (urgent, normal or low). JSON only.")


def ticket(rng: random.Random, split: int) -> dict:
    """One message and its record; `split` 0 uses the training phrasings, 1 the held-out ones."""
    record = {"customer": rng.choice(NAMES), "order_id": f"{rng.choice('ABCDEFGHKLMPRSTZ')}{rng.choice('ABCDEFGHKLMPRSTZ')}"
              f"-{rng.randrange(1000, 10000)}", "product": rng.choice(PRODUCTS), "issue": rng.choice(list(ISSUES)),
              "refund": rng.random() < 0.5, "priority": rng.choice(list(PRIORITY))}
    parts = [rng.choice(BODY[split]).format(product=record["product"], order_id=record["order_id"],
                                            issue=rng.choice(ISSUES[record["issue"]][split])),
             rng.choice(REFUND[record["refund"]][split]), rng.choice(PRIORITY[record["priority"]][split])]
    rng.shuffle(parts)
    text = " ".join([rng.choice(OPENERS[split]).format(customer=record["customer"])] + [p for p in parts if p])
    return {"messages": [{"role": "user", "content": text},
                         {"role": "assistant", "content": json.dumps(record)}]}


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(17)
    train, test = intents(rng)
    write(HERE / "intents/train.jsonl", train)
    write(HERE / "intents/test.jsonl", test)
    (HERE / "intents/labels.txt").write_text("\n".join(INTENTS) + "\n")
    (HERE / "intents/system.txt").write_text(SYSTEM_INTENTS.format(labels=", ".join(INTENTS)) + "\n")
    write(HERE / "tickets/train.jsonl", [ticket(rng, 0) for _ in range(300)])
    write(HERE / "tickets/test.jsonl", [ticket(rng, 1) for _ in range(60)])
    (HERE / "tickets/schema.json").write_text(json.dumps(TICKET_SCHEMA, indent=2) + "\n")
    (HERE / "tickets/system.txt").write_text(SYSTEM_TICKETS.format(products=", ".join(PRODUCTS),
                                                                   issues=", ".join(ISSUES)) + "\n")
    print(f"intents: {len(train)} train, {len(test)} test, {len(INTENTS)} labels; tickets: 300 train, 60 test")


if __name__ == "__main__":
    main()
