//! A check a chat template must pass before it runs: no namespace ends up
//! inside a namespace. A namespace is the one mutable value of minijinja;
//! stored in itself (`{% set ns.x = ns %}`, directly or through a list, an
//! alias or a macro argument), printing or comparing it recurses without
//! end inside a single instruction, where the fuel budget cannot stop it,
//! and overflows the stack: the process dies. Real chat templates keep
//! strings, numbers, booleans and message fields in namespaces, so the
//! check can be strict, over the template's syntax tree (minijinja's parser,
//! from its `unstable_machinery` API):
//! - a value "may be a namespace" if it is `namespace(...)`, a variable
//!   bound to such a value (`set`, `with`, a macro parameter at any call),
//!   a branch of `if`/`and`/`or`, or a filter of one;
//! - such a value may not be stored in a namespace attribute, nor put in a
//!   list, tuple or map literal, nor passed to a function other than a
//!   macro (so no container holds one, and attribute or item access never
//!   yields one).

use std::collections::{HashMap, HashSet};

use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt};
use minijinja::syntax::SyntaxConfig;

type Tainted<'s> = HashSet<&'s str>;

fn call_args<'x, 's>(args: &'x [CallArg<'s>]) -> impl Iterator<Item = &'x Expr<'s>> {
    args.iter().map(|a| match a {
        CallArg::Pos(x) | CallArg::Kwarg(_, x) | CallArg::PosSplat(x) | CallArg::KwargSplat(x) => x,
    })
}

/// Whether the value of `e` may be a namespace (see the module comment).
fn may_be_namespace(e: &Expr, tainted: &Tainted) -> bool {
    match e {
        Expr::Var(v) => tainted.contains(v.id),
        Expr::Call(c) => matches!(&c.expr, Expr::Var(v) if v.id == "namespace"),
        Expr::IfExpr(i) => {
            may_be_namespace(&i.true_expr, tainted) || i.false_expr.as_ref().is_some_and(|f| may_be_namespace(f, tainted))
        }
        Expr::BinOp(b) if matches!(b.op, BinOpKind::ScAnd | BinOpKind::ScOr) => {
            may_be_namespace(&b.left, tainted) || may_be_namespace(&b.right, tainted)
        }
        Expr::Filter(f) => {
            f.expr.as_ref().is_some_and(|x| may_be_namespace(x, tainted))
                || call_args(&f.args).any(|x| may_be_namespace(x, tainted))
        }
        // Strings, numbers and booleans; attribute and item access yield
        // what the other rules keep namespace-free.
        _ => false,
    }
}

/// The variables an assignment target binds (`a`, `a, b`, `(a, (b, c))`).
fn bound<'s>(target: &Expr<'s>, out: &mut Vec<&'s str>) {
    match target {
        Expr::Var(v) => out.push(v.id),
        Expr::Tuple(t) => t.items.iter().for_each(|x| bound(x, out)),
        Expr::List(l) => l.items.iter().for_each(|x| bound(x, out)),
        _ => {}
    }
}

/// The template's data flow, as far as namespaces go.
#[derive(Default)]
struct Flows<'x, 's> {
    /// Variables bound to an expression's value (`set`, `with`).
    assigns: Vec<(Vec<&'s str>, &'x Expr<'s>)>,
    /// Macro calls: (macro name, arguments).
    calls: Vec<(&'s str, &'x [CallArg<'s>])>,
    macros: HashMap<&'s str, Vec<&'s str>>,
    /// Every expression, for the storage rules.
    exprs: Vec<&'x Expr<'s>>,
    /// `{% set x.attr = value %}`: (attr, value).
    attr_sets: Vec<(&'s str, &'x Expr<'s>)>,
}

impl<'x, 's> Flows<'x, 's> {
    fn expr(&mut self, e: &'x Expr<'s>) {
        self.exprs.push(e);
        let mut sub = |x: &'x Expr<'s>| self.expr(x);
        match e {
            Expr::Var(_) | Expr::Const(_) => {}
            Expr::Slice(s) => {
                sub(&s.expr);
                for x in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    sub(x);
                }
            }
            Expr::UnaryOp(u) => sub(&u.expr),
            Expr::BinOp(b) => {
                sub(&b.left);
                sub(&b.right);
            }
            Expr::Compare(c) => {
                sub(&c.expr);
                c.ops.iter().for_each(|op| sub(&op.expr));
            }
            Expr::IfExpr(i) => {
                sub(&i.test_expr);
                sub(&i.true_expr);
                if let Some(f) = &i.false_expr {
                    sub(f);
                }
            }
            Expr::Filter(f) => {
                if let Some(x) = &f.expr {
                    sub(x);
                }
                call_args(&f.args).for_each(sub);
            }
            Expr::Test(t) => {
                sub(&t.expr);
                call_args(&t.args).for_each(sub);
            }
            Expr::GetAttr(g) => sub(&g.expr),
            Expr::GetItem(g) => {
                sub(&g.expr);
                sub(&g.subscript_expr);
            }
            Expr::Call(c) => {
                if let Expr::Var(v) = &c.expr {
                    self.calls.push((v.id, &c.args));
                }
                self.expr(&c.expr);
                call_args(&c.args).for_each(|x| self.expr(x));
            }
            Expr::List(l) => l.items.iter().for_each(sub),
            Expr::Tuple(t) => t.items.iter().for_each(sub),
            Expr::Map(m) => m.keys.iter().chain(&m.values).for_each(sub),
        }
    }

    fn stmts(&mut self, body: &'x [Stmt<'s>]) {
        body.iter().for_each(|s| self.stmt(s));
    }

    fn stmt(&mut self, s: &'x Stmt<'s>) {
        match s {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitExpr(e) => self.expr(&e.expr),
            Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
            // Loop variables take the items of a container (none holds a
            // namespace) or a namespace's keys.
            Stmt::ForLoop(f) => {
                self.expr(&f.iter);
                if let Some(x) = &f.filter_expr {
                    self.expr(x);
                }
                self.stmts(&f.body);
                self.stmts(&f.else_body);
            }
            Stmt::IfCond(i) => {
                self.expr(&i.expr);
                self.stmts(&i.true_body);
                self.stmts(&i.false_body);
            }
            Stmt::WithBlock(w) => {
                for (target, value) in &w.assignments {
                    let mut names = Vec::new();
                    bound(target, &mut names);
                    self.expr(value);
                    self.assigns.push((names, value));
                }
                self.stmts(&w.body);
            }
            Stmt::Set(set) => {
                self.expr(&set.expr);
                match &set.target {
                    Expr::GetAttr(g) => self.attr_sets.push((g.name, &set.expr)),
                    target => {
                        let mut names = Vec::new();
                        bound(target, &mut names);
                        self.assigns.push((names, &set.expr));
                    }
                }
            }
            // A block `set` captures rendered text: a string.
            Stmt::SetBlock(b) => self.stmts(&b.body),
            Stmt::AutoEscape(a) => self.stmts(&a.body),
            Stmt::FilterBlock(f) => self.stmts(&f.body),
            Stmt::Block(b) => self.stmts(&b.body),
            Stmt::Macro(m) => {
                let mut params = Vec::new();
                m.args.iter().for_each(|a| bound(a, &mut params));
                m.defaults.iter().for_each(|d| self.expr(d));
                self.macros.insert(m.name, params);
                self.stmts(&m.body);
            }
            Stmt::CallBlock(c) => {
                if let Expr::Var(v) = &c.call.expr {
                    self.calls.push((v.id, &c.call.args));
                }
                call_args(&c.call.args).for_each(|x| self.expr(x));
                self.stmts(&c.macro_decl.body);
            }
            Stmt::Do(d) => {
                if let Expr::Var(v) = &d.call.expr {
                    self.calls.push((v.id, &d.call.args));
                }
                self.expr(&d.call.expr);
                call_args(&d.call.args).for_each(|x| self.expr(x));
            }
            // No loader is configured: these fail when they run.
            Stmt::Import(_) | Stmt::FromImport(_) | Stmt::Extends(_) | Stmt::Include(_) => {}
        }
    }
}

const WHY: &str = "which can make it print itself without end; chat templates keep strings and numbers in namespaces";

/// Err(why) if `source` could put a namespace inside a namespace; parse
/// errors are left to the template's own compilation.
pub fn check(source: &str) -> Result<(), String> {
    let Ok(ast) = minijinja::machinery::parse(source, "chat", SyntaxConfig::default()) else {
        return Ok(());
    };
    let mut flows = Flows::default();
    flows.stmt(&ast);
    let mut tainted: Tainted = HashSet::new();
    loop {
        let before = tainted.len();
        for (names, value) in &flows.assigns {
            if may_be_namespace(value, &tainted) {
                tainted.extend(names.iter().copied());
            }
        }
        for (name, args) in &flows.calls {
            if let Some(params) = flows.macros.get(name) {
                if call_args(args).any(|a| may_be_namespace(a, &tainted)) {
                    tainted.extend(params.iter().copied());
                }
            }
        }
        if tainted.len() == before {
            break;
        }
    }
    if let Some((attr, _)) = flows.attr_sets.iter().find(|(_, v)| may_be_namespace(v, &tainted)) {
        return Err(format!("the chat template may store a namespace in a namespace (`set ….{attr} = …`), {WHY}"));
    }
    for e in &flows.exprs {
        let stored = match e {
            Expr::List(l) => l.items.iter().any(|x| may_be_namespace(x, &tainted)),
            Expr::Tuple(t) => t.items.iter().any(|x| may_be_namespace(x, &tainted)),
            Expr::Map(m) => m.values.iter().chain(&m.keys).any(|x| may_be_namespace(x, &tainted)),
            Expr::Call(c) => {
                let to_macro = matches!(&c.expr, Expr::Var(v) if flows.macros.contains_key(v.id));
                !to_macro && call_args(&c.args).any(|x| may_be_namespace(x, &tainted))
            }
            _ => false,
        };
        if stored {
            return Err(format!("the chat template may put a namespace in a list, map or function call, {WHY}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn namespaces_in_namespaces_are_refused() {
        for t in [
            "{% set ns = namespace() %}{% set ns.x = ns %}{{ ns }}",
            "{% set ns = namespace() %}{% set a = [ns] %}{% set ns.x = a %}",
            "{% set ns = namespace() %}{% for n in [ns] %}{% set ns.x = n %}{% endfor %}",
            "{% set ns = namespace() %}{% set ns.x = namespace(y=1) %}",
            "{% macro m(a, b) %}{% set a.x = b %}{% endmacro %}{% set ns = namespace() %}{{ m(ns, ns) }}",
            "{% set ns = namespace() %}{% with q = ns %}{% set ns.x = q %}{% endwith %}",
            "{% set ns = namespace() %}{% set d = {'a': ns} %}{% set ns.x = d.a %}",
            "{% set ns = namespace() %}{% set ns.x = ns or 1 %}",
            "{% set ns = namespace() %}{% set ns.x = ns|default(1) %}",
        ] {
            assert!(check(t).is_err(), "{t}");
        }
    }

    #[test]
    fn real_template_patterns_pass() {
        for t in [
            "{% set ns = namespace(found=false, idx=0) %}{% for m in messages %}{% set ns.found = m.role == 'system' %}\
             {% set ns.idx = loop.index %}{% endfor %}{{ ns.found }}",
            "{% set ns = namespace(text='') %}{% for m in messages %}{% set ns.text = ns.text ~ m.content %}{% endfor %}",
            "{% macro render(tool) %}{% set ns = namespace(d='') %}{% set ns.d = tool.description %}{{ ns.d }}{% endmacro %}\
             {% for t in tools %}{{ render(t) }}{% endfor %}",
            "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
        ] {
            assert!(check(t).is_ok(), "{t}");
        }
    }
}
