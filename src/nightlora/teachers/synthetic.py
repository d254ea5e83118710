"""Prompts a teacher is asked only when the real ones run out (``teacher.synthetic`` replaces them).

Requests a personal assistant gets every day and that need it to act -- the kind the
original topped its prompts up with -- in the two languages of Hanni's users.  They carry no
context and nothing about the user, so the teacher's replies teach the assistant's voice and
its actions, never facts.
"""

from __future__ import annotations

SYNTHETIC_PROMPTS: tuple[str, ...] = (
    "Remind me to call the dentist tomorrow at 10:00.",
    "Напомни мне завтра в 9 утра оплатить интернет.",
    "What's the weather like today?",
    "Какая погода будет на выходных?",
    "Add milk and eggs to my shopping list.",
    "Добавь в список покупок хлеб и сыр.",
    "Make a note: ideas for the weekend trip.",
    "Запиши заметку: позвонить в банк насчёт карты.",
    "Set a timer for 25 minutes, I'm starting to work.",
    "Поставь таймер на 10 минут.",
    "What do I have planned for this week?",
    "Что у меня запланировано на завтра?",
    "I spent 30 dollars on lunch, please track it.",
    "Потратил 5000 на продукты, запиши.",
    "Cancel my reminder about the meeting.",
    "Удали напоминание про встречу.",
)
