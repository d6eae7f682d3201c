//! `#[relay_plugin_sdk::plugin]`, re-exported by `relay-plugin-sdk`: exports an
//! `impl Plugin for T` block as the component's `plugin` world, and tells relay
//! (through `init`'s `hooks`) which optional hooks the block implements, so relay
//! does not call the others.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, ImplItem, ItemImpl};

/// The optional hooks and their flag in the contract's `hooks`.
const OPTIONAL: [(&str, &str); 3] = [
    ("on_event", "ON_EVENT"),
    ("on_ingress", "ON_INGRESS"),
    ("on_disconnect", "ON_DISCONNECT"),
];

/// Export an `impl Plugin for YourType { ... }` block as the plugin of this component.
///
/// Write it on the impl block itself; the hooks the block defines are the ones relay
/// calls (`on_handshake` is required; `init`, `on_event`, `on_ingress` and
/// `on_disconnect` are optional and behave as the trait's defaults when left out).
///
/// `#[plugin(headers = ["x-token"])]` names the request headers the hooks read: relay
/// then passes only those (`#[plugin(headers = [])]`: none). Without it, hooks get
/// every header, which costs two string copies per header on every call.
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    let headers = match headers_arg(attr.into()) {
        Ok(h) => h,
        Err(e) => return e.to_compile_error().into(),
    };
    let block = parse_macro_input!(item as ItemImpl);
    let is_plugin = block
        .trait_
        .as_ref()
        .and_then(|(_, path, _)| path.segments.last())
        .is_some_and(|s| s.ident == "Plugin");
    if !is_plugin {
        return syn::Error::new_spanned(
            &block.self_ty,
            "#[plugin] goes on the `impl Plugin for YourType { ... }` block",
        )
        .to_compile_error()
        .into();
    }
    let ty = &block.self_ty;
    let defined = |name: &str| {
        block
            .items
            .iter()
            .any(|i| matches!(i, ImplItem::Fn(f) if f.sig.ident == name))
    };
    let flags: Vec<_> = OPTIONAL
        .iter()
        .filter(|(hook, _)| defined(hook))
        .map(|(_, flag)| {
            let flag = syn::Ident::new(flag, proc_macro2::Span::call_site());
            quote!(::relay_plugin_sdk::Hooks::#flag)
        })
        .collect();
    let hooks = if flags.is_empty() {
        quote!(::relay_plugin_sdk::Hooks::empty())
    } else {
        quote!(#(#flags)|*)
    };
    quote! {
        #block

        #[doc(hidden)]
        struct __RelayPluginExport;

        impl ::relay_plugin_sdk::bindings::Guest for __RelayPluginExport {
            fn init(settings: String) -> Result<::relay_plugin_sdk::PluginInfo, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::init(&settings).map(|()| {
                    ::relay_plugin_sdk::PluginInfo {
                        hooks: #hooks,
                        headers: #headers,
                    }
                })
            }
            fn on_handshake(
                query: String,
                req: &::relay_plugin_sdk::bindings::relay::plugin::types::HandshakeRequest,
            ) -> Result<::relay_plugin_sdk::HandshakeDecision, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::on_handshake(
                    &::relay_plugin_sdk::HandshakeRequest::new(query, req),
                )
            }
            fn on_event(
                conn: ::relay_plugin_sdk::ConnInfo,
                event: ::relay_plugin_sdk::ClientEvent,
            ) -> Result<Vec<::relay_plugin_sdk::Action>, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::on_event(conn, event)
            }
            fn on_ingress(
                req: ::relay_plugin_sdk::IngressRequest,
            ) -> Result<::relay_plugin_sdk::IngressOutcome, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::on_ingress(req)
            }
            fn on_disconnect(
                conn: ::relay_plugin_sdk::ConnInfo,
                info: ::relay_plugin_sdk::DisconnectInfo,
            ) -> Result<Vec<::relay_plugin_sdk::Action>, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::on_disconnect(conn, info)
            }
        }

        ::relay_plugin_sdk::bindings::__export_plugin!(
            __RelayPluginExport with_types_in ::relay_plugin_sdk::bindings
        );
    }
    .into()
}

/// The `headers = ["name", ...]` argument, as the expression of `plugin-info.headers`:
/// `None` (every header) when absent.
fn headers_arg(attr: proc_macro2::TokenStream) -> syn::Result<proc_macro2::TokenStream> {
    if attr.is_empty() {
        return Ok(quote!(::core::option::Option::None));
    }
    let args = syn::parse::Parser::parse2(
        syn::punctuated::Punctuated::<syn::MetaNameValue, syn::Token![,]>::parse_terminated,
        attr.clone(),
    )?;
    let mut names = None;
    for arg in args {
        if !arg.path.is_ident("headers") || names.is_some() {
            return Err(syn::Error::new_spanned(
                &arg.path,
                "#[plugin] takes one argument: headers = [\"name\", ...] (the request headers the hooks read)",
            ));
        }
        let syn::Expr::Array(list) = &arg.value else {
            return Err(syn::Error::new_spanned(
                &arg.value,
                "headers = [\"name\", ...]: a list of header names",
            ));
        };
        let mut v = Vec::new();
        for e in &list.elems {
            match e {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) if is_header_name(&s.value()) => v.push(s.value()),
                _ => {
                    return Err(syn::Error::new_spanned(
                        e,
                        "a header name: a lowercase string literal such as \"x-token\"",
                    ))
                }
            }
        }
        names = Some(v);
    }
    let names = names.unwrap_or_default();
    Ok(quote!(::core::option::Option::Some(
        ::std::vec![#(::std::string::String::from(#names)),*]
    )))
}

/// A lowercase HTTP header name (RFC 9110 token characters).
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}
